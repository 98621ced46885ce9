"""JSONL task files (clear errors naming the line) and the built-in tasks from the held-out split."""

from __future__ import annotations

import json

import pytest

from scaling_train.data.corpus import is_validation
from scaling_train.evals import ClozeItem, MultipleChoiceItem, TaskFileError, load_jsonl_task
from scaling_train.evals.builtin import (
    build_tasks,
    compiles_task,
    identifier_task,
    next_line_task,
    parses,
    still_compiles,
    validation_documents,
)


def _write(tmp_path, lines: list[str], name: str = "task.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jsonl_multiple_choice_and_cloze(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"context": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0}),
            "",
            json.dumps({"context": "x", "choices": ["a", "b", "c"], "answer": "c", "id": "q2"}),
        ],
        "mine.jsonl",
    )
    t = load_jsonl_task(p)
    assert t.name == "mine" and t.kind == "multiple_choice" and len(t) == 2
    assert t.items[1] == MultipleChoiceItem("x", ("a", "b", "c"), 2, id="q2")
    c = load_jsonl_task(_write(tmp_path, [json.dumps({"context": "def f", "answer": "(x):"})]), name="cz")
    assert c.kind == "cloze" and c.items[0] == ClozeItem("def f", "(x):", id=f"{tmp_path / 'task.jsonl'}:1")


GOOD = json.dumps({"context": "a", "choices": ["b", "c"], "answer": 1})


@pytest.mark.parametrize(
    "bad, lineno, match",
    [
        ('{"context": "a", "choices": ["b", "c"], "answer": 1', 3, "not valid JSON"),
        ('["a", "b"]', 2, "expected a JSON object"),
        ('{"choices": ["b", "c"], "answer": 0}', 2, "'context' must be a string"),
        ('{"context": "a", "choices": ["b", "c"]}', 2, "missing 'answer'"),
        (
            '{"context": "a", "choices": ["b", "c"], "answer": 2}',
            2,
            r"answer=2 is out of range for 2 choices",
        ),
        ('{"context": "a", "choices": ["b", "c"], "answer": "d"}', 2, "answer 'd' is not one of the choices"),
        ('{"context": "a", "choices": ["b"], "answer": 0}', 2, "'choices' must be a list of >= 2"),
        ('{"context": "a", "choices": ["b", ""], "answer": 0}', 2, "'choices' must be a list of >= 2"),
        ('{"context": "a", "choices": ["b", "c"], "answer": true}', 2, "'answer' must be a choice index"),
        ('{"context": "a", "answer": ""}', 2, "needs a non-empty string 'answer'"),
        (
            '{"context": "a", "answer": "b"}',
            2,
            "a cloze item in a multiple_choice task .line 1 set the kind.",
        ),
        (
            '{"context": "a", "choices": ["b", "c"], "answer": 0, "label": 1}',
            2,
            r"unknown key\(s\) \['label'\]",
        ),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, bad, lineno, match):
    lines = [GOOD, bad] if lineno == 2 else [GOOD, GOOD, bad]
    p = _write(tmp_path, lines)
    with pytest.raises(TaskFileError, match=match) as e:
        load_jsonl_task(p)
    assert f"{p}:{lineno}:" in str(e.value)


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match="no items"):
        load_jsonl_task(_write(tmp_path, ["", "  "]))
    with pytest.raises(TaskFileError, match="no such task file"):
        load_jsonl_task(tmp_path / "nope.jsonl")


def test_compile_verifier():
    prompt = "def f(x):\n    y = x + 1\n"
    v = still_compiles(prompt)
    assert v("    return y\nfoo(")  # the torn last line is dropped
    assert not v("    return y")  # no complete line
    assert not v("\n\n")  # nothing new
    assert not v("    return (y\n")
    assert not v("  return y\n")  # bad dedent
    assert parses(prompt) and not parses(prompt + "else:\n")


@pytest.fixture(scope="module")
def docs():
    return validation_documents(max_docs=6)


def test_builtin_tasks_are_held_out_and_deterministic(docs):
    assert len(docs) >= 2 and all(is_validation(d.name, 0.05) for d in docs)
    names = {d.name for d in docs}
    nl = next_line_task(docs, n_items=12, seed=1)
    assert len(nl) == 12 and nl == next_line_task(docs, n_items=12, seed=1)
    assert nl != next_line_task(docs, n_items=12, seed=2)
    by_name = {d.name: d.text for d in docs}
    for it in nl.items:
        doc, line = it.id.rsplit(":", 1)
        assert doc in names
        lines = by_name[doc].split("\n")
        true = it.choices[it.answer]
        assert lines[int(line) - 1] == true and it.context.endswith("\n")
        # distractors come from other files
        assert all(c != true and c not in lines for c in it.choices if c != true) or len(docs) < 2
    ident = identifier_task(docs, n_items=10, seed=0)
    for it in ident.items:
        word = it.answer.strip()
        assert word.isidentifier() and word in it.context  # seen earlier in the file
    comp = compiles_task(docs, n_items=5, seed=0)
    assert 1 <= len(comp) <= 5  # as many functions as the few held-out files hold
    for it in comp.items:
        assert parses(it.prompt) and it.prompt.startswith(("def ", "async def "))
        assert not it.verifier("")


def test_build_tasks_mixes_builtin_and_files(tmp_path, docs):
    p = _write(tmp_path, [GOOD], "own.jsonl")
    ts = build_tasks(["identifier", str(p)], docs, n_items=3)
    assert [t.name for t in ts] == ["identifier", "own"]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_tasks(["nope"], docs)
