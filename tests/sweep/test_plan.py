"""Planner: names, hashes, rules, budgets, dry runs, and bad specs failing before anything starts."""

from __future__ import annotations

import subprocess
import time

import pytest

from scaling_train.config import ConfigError
from scaling_train.sweep.plan import make_plan, parse_run_name, run_name
from scaling_train.sweep.spec import load_spec
from tests.fixtures.sweeps import REPO, sweep_cmd, tiny_spec, write_spec


def plan_of(tmp_path, spec: dict, name="s.yaml"):
    return make_plan(load_spec(write_spec(tmp_path / name, spec)), output=tmp_path / "out")


def test_names_parse_back_and_are_deterministic(tmp_path):
    spec = tiny_spec(
        grid={"sizes": ["0.1M", "0.2M"], "tokens": [2560, 5120], "seeds": [0, 1], "batch_sizes": [8, 16]}
    )
    p1, p2 = plan_of(tmp_path, spec), plan_of(tmp_path, spec)
    assert len(p1.runs) == 2 * 2 * 2 * 2
    assert [r.name for r in p1.runs] == [r.name for r in p2.runs]
    assert len({r.name for r in p1.runs}) == len(p1.runs)
    for r in p1.runs:
        c = parse_run_name(r.name)
        assert c["B"] == r.batch_size and c["seed"] == r.seed and c["hash"] == r.config_hash
        assert c["N"] == pytest.approx(r.n_params, rel=0.05) and c["D"] == pytest.approx(r.tokens, rel=0.05)
        assert c["lr"] == pytest.approx(r.lr, rel=0.05)
    assert parse_run_name("N3.2e7-D6.4e8-B256-lr3e-3-s0-0123abcd") == {
        "N": 3.2e7,
        "D": 6.4e8,
        "B": 256,
        "lr": 3e-3,
        "seed": 0,
        "hash": "0123abcd",
    }
    assert (
        run_name(n_params=3.2e7, tokens=6.4e8, batch_size=256, lr=3e-3, seed=0, cfg_hash="0123abcd")
        == "N3.2e7-D6.4e8-B256-lr3e-3-s0-0123abcd"
    )
    with pytest.raises(ValueError, match="not a sweep run name"):
        parse_run_name("N3.2e7-oops")


def test_edited_config_is_a_new_run(tmp_path):
    a = plan_of(tmp_path, tiny_spec())
    spec = tiny_spec()
    spec["run"] = {**spec["run"], "optim": {"warmup_steps": 3, "lr": 3e-3}}
    b = plan_of(tmp_path, spec)
    assert a.runs[0].config_hash != b.runs[0].config_hash and a.runs[0].name != b.runs[0].name
    # non-semantic keys (progress bar, log interval) keep the run
    spec = tiny_spec(overrides={"train.progress": True, "train.log_every": 5})
    assert plan_of(tmp_path, spec).runs[0].name == a.runs[0].name


def test_budgets_rules_and_isoflop(tmp_path):
    spec = tiny_spec(
        grid={"sizes": ["0.1M", "1M"], "tokens_per_param": [0.5], "seeds": [0]},
        rules={
            "lr": {"value": 1e-3, "ref_size": "1M", "exponent": -0.5},
            "batch_size": {"value": 8, "ref_size": "0.1M", "exponent": 1.0, "multiple_of": 8},
        },
    )
    p = plan_of(tmp_path, spec)
    small, big = p.runs
    assert small.lr == pytest.approx(1e-3 * (1e5 / 1e6) ** -0.5, rel=1e-2)
    assert big.lr == pytest.approx(1e-3, rel=1e-2)
    assert small.batch_size == 8 and big.batch_size == 80  # 8 * (1e6 / 1e5) ** 1
    assert (
        small.tokens >= 0.5 * small.n_params and small.tokens - 0.5 * small.n_params < small.batch_size * 32
    )
    # IsoFLOP: D = C / flops_per_token(N), so every run of a budget spends ~C
    spec = tiny_spec(grid={"sizes": ["0.1M", "0.2M"], "flops": [2e11], "seeds": [0]})
    for r in plan_of(tmp_path, spec).runs:
        assert r.flops == pytest.approx(2e11, rel=0.02)
    # muP: one lr for every width and model.mup set
    spec = tiny_spec(
        grid={"sizes": ["0.1M", "0.2M"], "tokens": [2560]},
        rules={"lr": {"value": 1e-2, "ref_size": "1M", "exponent": -1}, "mup": True},
    )
    runs = plan_of(tmp_path, spec).runs
    assert {r.lr for r in runs} == {1e-2} and all(r.overrides["model.mup"] is True for r in runs)


def test_staggered_isoflop_evals_per_run_and_branch_selection(tmp_path):
    spec = tiny_spec(
        grid={"sizes": ["0.1M", "0.2M", "0.3M"], "flops": [2e11, 4e11], "seeds": [0],
              "budget_sizes": [["0.1M", "0.2M"], ["0.2M", "0.3M"]]},
        rules={"evals_per_run": 4},
        cbs={"every": 50, "factors": [2], "budgets": [4e11], "sizes": ["0.2M", "0.3M"]},
    )  # fmt: skip
    runs = plan_of(tmp_path, spec).runs
    got = {(r.size, round(r.flops, -10)) for r in runs}
    assert got == {("0.1M", 2e11), ("0.2M", 2e11), ("0.2M", 4e11), ("0.3M", 4e11)}
    for r in runs:  # k evaluations per run whatever its length
        assert r.overrides["train.eval_every"] == max(1, r.steps // 4)
        assert bool(r.cbs_steps) == (r.flops > 3e11)  # only the 4e11 budget's runs are branched


def test_budget_order_starts_the_smallest_budget_first(tmp_path, monkeypatch):
    from scaling_train.sweep.backends import local

    spec = tiny_spec(grid={"sizes": ["0.1M", "0.2M"], "flops": [4e11, 2e11], "seeds": [0]},
                     launch={"order": "budget", "fitter": False, "report": False})  # fmt: skip
    plan = plan_of(tmp_path, spec)
    by_dir = {r.run_dir: r for r in plan.runs}
    events = []  # ("start" | "end", size, budget) in the order they happened

    def fake_execute(run_dir, *a, **k):
        r = by_dir[run_dir]
        events.append(("start", r.size, float(f"{r.flops:.2g}")))
        time.sleep(0.05 if r.size == "0.2M" else 0.3)  # the small model's first run ends last
        events.append(("end", r.size, float(f"{r.flops:.2g}")))
        return 0

    monkeypatch.setattr(local, "execute", fake_execute)
    plan.spec.launch.concurrency = 2
    local.run_local(plan, say=lambda s: None)
    starts = [e for e in events if e[0] == "start"]
    assert len(starts) == 4 and {e[2] for e in starts[:2]} == {2e11}  # the smallest budget first
    # a run starts only after its size's smaller-budget run ended (its finished same-size reference), even
    # when a slot is free earlier: 0.1M at 4e11 waits for 0.1M at 2e11
    for size in ("0.1M", "0.2M"):
        assert events.index(("end", size, 2e11)) < events.index(("start", size, 4e11)), events


def test_uncertainty_launch_order_follows_the_fitters_ranking(tmp_path, monkeypatch):
    """adaptive.launch_order=uncertainty: when a slot frees, the first ready run in SWEEP/launch_order.json
    starts (the fitter writes it; here the first run does); unranked runs keep the planned order after the
    ranked ones; an unreadable file means the planned order."""
    import json

    from scaling_train.fitter.adaptive import LAUNCH_ORDER_FILE
    from scaling_train.sweep.backends import local

    spec = tiny_spec(grid={"sizes": ["0.1M", "0.2M"], "flops": [4e11, 2e11], "seeds": [0]},
                     adaptive={"launch_order": "uncertainty"}, launch={"fitter": False, "report": False})  # fmt: skip

    def launch(content: str) -> tuple[list[str], list[str]]:
        """(planned order, start order) of a sweep whose first run writes the ranking (or garbage)."""
        (tmp_path / content).mkdir()
        plan = plan_of(tmp_path / content, spec)
        plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        (plan.sweep_dir / LAUNCH_ORDER_FILE).write_text("{}")  # a stale file: prepare_dir removes it
        planned = [r.name for r in local._todo(plan)]
        by_dir = {r.run_dir: r for r in plan.runs}
        started: list[str] = []

        def fake_execute(run_dir, *a, **k):
            started.append(by_dir[run_dir].name)
            if len(started) == 1:
                assert not (plan.sweep_dir / LAUNCH_ORDER_FILE).exists()
                rest = [n for n in planned if n != started[0]]
                rec = {"order": [{"name": n} for n in [rest[2], rest[0]]]} if content == "ranked" else None
                (plan.sweep_dir / LAUNCH_ORDER_FILE).write_text(json.dumps(rec) if rec else "{not json")
            return 0

        monkeypatch.setattr(local, "execute", fake_execute)
        plan.spec.launch.concurrency = 1
        local.run_local(plan, say=lambda s: None)
        return planned, started

    planned, started = launch("ranked")
    assert started == [planned[0], planned[3], planned[1], planned[2]], (started, planned)
    planned, started = launch("garbage")
    assert started == planned


def test_resources_from_n_and_d(tmp_path):
    spec = tiny_spec(
        grid={"sizes": ["1B"], "tokens_per_param": [20]},
        run={"model": {"seq_len": 2048}},
        resources={"gpu": True, "devices": None, "devices_per_node": 8},
    )
    (r,) = plan_of(tmp_path, spec).runs
    # 6 * 1e9 * 2e10 = 1.2e20 FLOPs at 2e14 FLOP/s per GPU within ~4 h -> >= 32 GPUs -> 4 nodes of 8
    assert r.devices == 8 and r.nodes >= 4 and r.time_limit_min > 60
    assert "device=cuda" in " ".join(f"{k}={v}" for k, v in r.overrides.items())


BAD = [
    ({"grid": {"sizes": [], "tokens": [2560]}}, ["grid.sizes", "empty"]),
    ({"grid": {"sizes": ["0.1M"], "tokens": []}}, ["grid.tokens", "empty"]),
    ({"grid": {"sizes": ["12Q"], "tokens": [2560]}}, ["grid.sizes[0]", "'12Q'", "ladder"]),
    (
        {"grid": {"sizes": ["0.1M"], "tokens": [100]}},
        ["grid.tokens", "100", "below one optimizer step", "8*32"],
    ),
    ({"grid": {"sizes": ["0.1M"], "tokens": [2560], "flops": [1e12]}}, ["exactly one", "tokens", "flops"]),
    ({"grid": {"sizes": ["0.1M"], "tokens": [2560], "seeds": []}}, ["grid.seeds", "empty"]),
    ({"grid": {"sizes": ["0.1M"], "tokens": [-5]}}, ["grid.tokens", "> 0"]),
    ({"gird": {}}, ["unknown key 'gird'", "grid"]),
    ({"launch": {"concurrency": 0}}, ["launch.concurrency=0", ">= 1"]),
    ({"launch": {"backend": "ssh"}}, ["launch.backend='ssh'", "local", "slurm"]),
    ({"overrides": {"optim.lrr": 1}}, ["lrr", "known keys"]),
    ({"overrides": {"model.seq_len": "long"}}, ["model.seq_len", "'long'", "integer"]),
    ({"adaptive": {"tolerance": 1.5}}, ["adaptive: tolerance=1.5", "< 1", "relative"]),
    ({"adaptive": {"tolerence": 0.02}}, ["adaptive: unknown key(s) ['tolerence']", "'tolerance'"]),
    ({"adaptive": {"stable_updates": 0}}, ["adaptive: stable_updates=0", "[1, 100]"]),
    ({"adaptive": "yes"}, ["adaptive='yes'", "not a valid dict"]),
    (
        {"grid": {"sizes": ["0.1M", "0.2M"], "flops": [2e11, 4e11], "budget_sizes": [["0.1M"]]}},
        ["grid.budget_sizes has 1 lists", "2 values of grid.flops"],
    ),
    (
        {"grid": {"sizes": ["0.1M", "0.2M"], "flops": [2e11], "budget_sizes": [["0.3M"]]}},
        ["grid.budget_sizes[0]=['0.3M']", "grid.flops[0]=2e+11", "['0.3M']", "grid.sizes=['0.1M', '0.2M']"],
    ),
    ({"rules": {"evals_per_run": 0}}, ["rules.evals_per_run=0", "integer >= 1"]),
    ({"launch": {"fitter_interval": 0}}, ["launch.fitter_interval=0", "> 0 seconds"]),
    ({"launch": {"order": "random"}}, ["launch.order='random'", "longest", "budget"]),
    ({"cbs": {"every": 50, "sizes": ["5M"]}}, ["cbs.sizes=['5M']", "not in grid.sizes"]),
    ({"cbs": {"every": 50, "budgets": [999]}}, ["cbs.budgets=[999.0]", "not in grid.tokens=[2560.0]"]),
]


@pytest.mark.parametrize("over,needles", BAD, ids=[n[0] for _, n in BAD])
def test_bad_specs_fail_before_anything_starts(tmp_path, over, needles):
    spec = tiny_spec()
    spec.update(over)
    path = write_spec(tmp_path / "bad.yaml", spec)
    with pytest.raises(ConfigError) as e:
        make_plan(load_spec(path), output=tmp_path / "out")
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    if over is not BAD[0][0] and over is not BAD[3][0]:  # the CLI path twice is enough (each costs ~4 s)
        return
    # through the CLI: exit code 2, the message on stderr, nothing created
    out = subprocess.run(
        sweep_cmd(path, "--output", str(tmp_path / "out")), capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 2 and "error:" in out.stderr and needles[0] in out.stderr
    assert not (tmp_path / "out").exists()


SET_BAD = [
    (["launch.concurrency=0"], ["command line", "launch.concurrency=0", ">= 1"]),  # _check, as in the file
    (["grid.seeds=[]"], ["command line", "grid.seeds", "empty"]),
    (["launch.backend=ssh"], ["command line", "launch.backend='ssh'", "local"]),
    (["lanch.retries=2"], ["command line", "unknown key 'lanch'", "launch"]),
    (["launch.retrys=2"], ["command line", "unknown key 'launch.retrys'", "retries"]),
    (["adaptive.tolerance=-0.1"], ["command line: adaptive: tolerance=-0.1", "> 0"]),
    (["adaptive.spacing=2"], ["command line: adaptive: spacing=2", "[0, 1)"]),
]


@pytest.mark.parametrize("items,needles", SET_BAD, ids=[i[0] for i, _ in SET_BAD])
def test_set_overrides_go_through_the_spec_validation(tmp_path, items, needles):
    path = write_spec(tmp_path / "s.yaml", tiny_spec())
    with pytest.raises(ConfigError) as e:
        load_spec(path, items)
    for n in needles:
        assert n in str(e.value), f"{n!r} not in {str(e.value)!r}"


def test_set_overrides_win_over_the_file(tmp_path):
    path = write_spec(tmp_path / "s.yaml", tiny_spec())
    spec = load_spec(path, ["launch.retries=3", "grid.seeds=[0, 1]", "run.optim.lr=0.002"])
    assert spec.launch.retries == 3 and spec.grid.seeds == [0, 1] and spec.run["optim"]["lr"] == 0.002
    assert spec.run["train"]["max_steps"] == 10  # the rest of the file's run block is kept
    # the CLI's --set and --concurrency take the same path
    out = subprocess.run(
        sweep_cmd(path, "--dry-run", "--output", str(tmp_path / "o"), "--concurrency", "0"),
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2 and "launch.concurrency=0" in out.stderr, out.stderr


@pytest.mark.slow  # 11 s on 2 idle cores
def test_dry_run_prints_plan_and_commands_and_starts_nothing(tmp_path):
    spec = tiny_spec(grid={"sizes": ["0.1M", "0.2M"], "tokens": [2560, 5120]})
    path = write_spec(tmp_path / "s.yaml", spec)
    for backend in ("local", "torchrun", "slurm"):
        out = subprocess.run(
            sweep_cmd(path, "--output", str(tmp_path / "out"), "--backend", backend, "--dry-run"),
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert out.returncode == 0, out.stderr
        plan = make_plan(load_spec(path), output=tmp_path / "out")
        for r in plan.runs:
            assert r.name in out.stdout
        assert "FLOPs" in out.stdout and "est" in out.stdout
        if backend == "slurm":
            assert "#SBATCH --array=0-3" in out.stdout and "scaling_train.sweep.worker" in out.stdout
        else:
            assert out.stdout.count("scaling_train.cli train") == 4
        if backend == "torchrun":
            assert "--rdzv_backend c10d" not in out.stdout  # one process per run: plain python
    assert not (tmp_path / "out").exists()


def test_quickstart_and_shipped_specs_plan(tmp_path):
    for name in ("quickstart", "chinchilla-small", "ladder-3b"):
        plan = make_plan(load_spec(REPO / "configs" / "sweeps" / f"{name}.yaml"), output=tmp_path / name)
        assert plan.runs
        if name == "quickstart":  # an IsoFLOP design: >= 3 sizes per budget, the largest size held out
            assert len(plan.runs) >= 9 and sum(r.est_s for r in plan.runs) / 2 < 300
            per_budget: dict[float, set[int]] = {}
            for r in plan.runs:
                per_budget.setdefault(float(f"{r.flops:.2g}"), set()).add(r.n_params)
            assert len(per_budget) >= 3 and all(len(v) >= 3 for v in per_budget.values()), per_budget
            assert max(r.n_params for r in plan.runs) / min(r.n_params for r in plan.runs) >= 8
        if name == "ladder-3b":
            big = max(plan.runs, key=lambda r: (r.n_params, r.flops))
            assert big.nodes > 1 and big.overrides.get("dist.strategy") == "deepspeed"
            assert big.overrides.get("dist.zero_stage") == 3


def test_repetition_warnings_give_epochs_per_run_and_a_summary(tmp_path):
    from scaling_train.sweep.plan import repetition_warnings

    plan = plan_of(tmp_path, tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560, 5120, 10240]}))
    calls = []

    def fake_u(cfg):
        calls.append(cfg.data.corpus)
        return 4000

    lines = repetition_warnings(plan, fake_u)
    assert len(calls) == 1  # one data config: U computed once
    assert len(lines) == 4  # runs 1 and 2 repeat (1.28 and 2.56 epochs), the summary, the training-loss line
    assert (
        "run 1 " in lines[0] and "D=5,120" in lines[0] and "U=4,000" in lines[0] and "1.28 epochs" in lines[0]
    )
    assert "2.56 epochs" in lines[1] and "1.56 more times" in lines[1]
    assert lines[2].startswith("warning: 2 of 3 runs repeat data (up to 2.56 epochs)")
    # their laws read the training loss (the default): the fitter will not predict them, and says how to
    assert (
        lines[3].startswith("warning: 2 repeating run(s) have metrics.law_loss: train") and "eval" in lines[3]
    )
    (tmp_path / "ev").mkdir()
    ev = plan_of(tmp_path / "ev", tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560, 5120, 10240]},
                                            run={"metrics": {"law_loss": "eval"}}))  # fmt: skip
    assert len(repetition_warnings(ev, fake_u)) == 3
    assert repetition_warnings(plan, lambda cfg: 10**6) == []
    assert repetition_warnings(plan, lambda cfg: None) == [
        "note: U unknown before training for 3 runs (remote corpus); repetition not checked"
    ]


def test_dry_run_warns_when_runs_repeat_the_corpus(tmp_path, env):
    """A 20 kB slice of the built-in corpus holds ~8k training tokens: the 2.4e4-token run repeats it."""
    spec = tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560, 24576]})
    spec["run"] = {**spec["run"], "data": {**spec["run"]["data"], "max_bytes": 20_000}}
    path = write_spec(tmp_path / "s.yaml", spec)
    out = subprocess.run(
        sweep_cmd(path, "--output", str(tmp_path / "out"), "--dry-run"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    warnings = [ln for ln in out.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3 and "run 1 " in warnings[0] and "epochs" in warnings[0], out.stdout
    assert "1 of 2 runs repeat data" in warnings[1] and "law_loss: train" in warnings[2]
    assert not (tmp_path / "out").exists()


def test_unique_tokens_axis(tmp_path):
    """grid.unique_tokens: every (size, budget) once per data limit, as data.unique_tokens; distinct runs."""
    spec = tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560, 5120], "unique_tokens": [1024, 4096]})
    p = plan_of(tmp_path, spec)
    assert len(p.runs) == 4 and len({r.name for r in p.runs}) == 4
    assert sorted((r.tokens, r.overrides["data.unique_tokens"]) for r in p.runs) == [
        (2560, 1024), (2560, 4096), (5120, 1024), (5120, 4096)
    ]  # fmt: skip
    assert "data.unique_tokens" not in plan_of(tmp_path, tiny_spec()).runs[0].overrides
    for bad, msg in (([], "is empty"), ([1024, 1024], "has duplicates"), ([0], "must be > 0")):
        spec = tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560], "unique_tokens": bad})
        with pytest.raises(ConfigError, match=rf"grid.unique_tokens.*{msg}"):
            plan_of(tmp_path, spec)


def test_lr_follows_a_batch_axis_by_the_chosen_rule(tmp_path):
    """rules.lr_batch: the LR at batch B is rules.lr x f(B / B_rule), B_rule = rules.batch_size (8 in the
    tiny spec); none keeps one LR per size; an unknown rule names the allowed ones."""
    grid = {"sizes": ["0.1M"], "tokens": [2560 * 4], "batch_sizes": [4, 8, 32]}
    for rule, f in (("none", lambda r: 1.0), ("sqrt", lambda r: r**0.5), ("linear", lambda r: r)):
        spec = tiny_spec(grid=grid, rules={"lr_batch": rule})
        lrs = {r.batch_size: r.lr for r in plan_of(tmp_path, spec).runs}
        assert lrs == {b: pytest.approx(float(f"{3e-3 * f(b / 8):.3g}")) for b in (4, 8, 32)}
    with pytest.raises(ConfigError, match=r"lr_batch.*'cube'.*sqrt"):
        plan_of(tmp_path, tiny_spec(grid=grid, rules={"lr_batch": "cube"}))
