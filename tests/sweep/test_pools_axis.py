"""grid.pools: a sweep axis over data mixes of run.data.pools (issue 18, part 3)."""

from __future__ import annotations

import subprocess

import pytest

from scaling_train.config import ConfigError
from scaling_train.sweep.plan import make_plan, repetition_warnings
from scaling_train.sweep.spec import load_spec
from tests.fixtures.sweeps import REPO, TINY_RUN, sweep_cmd, tiny_spec, write_spec

POOLS = [{"name": "clean", "tokens": 1024, "noise": 0.0}, {"name": "noisy", "tokens": 8192, "noise": 0.3}]


def pool_spec(mixes, *, pools=POOLS, **grid) -> dict:
    run = {**TINY_RUN, "data": {**TINY_RUN["data"], "pools": pools, "mix": "clean"}}
    return tiny_spec(run=run, grid={"sizes": ["0.1M"], "tokens": [2560, 5120], "pools": mixes, **grid})


def plan_of(tmp_path, spec):
    return make_plan(load_spec(write_spec(tmp_path / "s.yaml", spec)), output=tmp_path / "out")


def test_pools_axis_one_run_per_mix_with_distinct_hashes(tmp_path):
    p = plan_of(tmp_path, pool_spec(["clean", "noisy", "clean:0.5+noisy:0.5"]))
    assert len(p.runs) == 6 and len({r.name for r in p.runs}) == 6
    assert sorted((r.tokens, r.overrides["data.mix"]) for r in p.runs) == [
        (2560, "clean"), (2560, "clean:0.5+noisy:0.5"), (2560, "noisy"),
        (5120, "clean"), (5120, "clean:0.5+noisy:0.5"), (5120, "noisy"),
    ]  # fmt: skip
    lines = repetition_warnings(p, lambda cfg: None)
    assert lines[0].startswith("per-pool epochs")
    mixed = next(ln for ln in lines if "[clean:0.5+noisy:0.5]" in ln and "D5.1e3" in ln)
    # 5120 tokens, 4 of 8 sequences per step from each: clean 2560 / 1024 = 2.5, noisy 2560 / 8192 = 0.31
    assert (
        "clean: U=1.02e+03, 4/8 seqs/step, 2.50 epochs; noisy: U=8.19e+03, 4/8 seqs/step, 0.31 epochs"
        in mixed
    )
    warn = [ln for ln in lines if ln.startswith("warning: run")]
    assert len(warn) == 4 and all("clean (" in ln and "noisy" not in ln for ln in warn)


@pytest.mark.parametrize(
    ("mixes", "match"),
    [
        ([], r"grid.pools is empty"),
        (["clean", "clean:1"], r"grid.pools\[1\]='clean:1' is the same mix as 'clean'"),
        (["clean:0.5+noisy:0.5", "noisy:2+clean:2"], r"grid.pools\[1\]=.* is the same mix"),
        (["clean:x"], r"grid.pools\[0\]='clean:x': weight 'x' of pool 'clean' is not a number"),
        (["clean:0"], r"grid.pools\[0\]='clean:0': weight 0.0 of pool 'clean' must be a finite number > 0"),
        (["clean+"], r"grid.pools\[0\]='clean\+': '' is not NAME or NAME:WEIGHT"),
        (["dirty"], r"grid.sizes\[0\]='0.1M' grid.pools='dirty'\).*pool 'dirty' is not declared in data.pools \['clean', 'noisy'\]"),
        (["clean:0.99+noisy:0.01"], r"grid.pools='clean:0.99\+noisy:0.01'\): data.mix gives pool\(s\) \['noisy'\] 0 of train.batch_size=8"),
    ],
)  # fmt: skip
def test_pools_axis_errors_name_the_key_and_value(tmp_path, mixes, match):
    with pytest.raises(ConfigError, match=match):
        plan_of(tmp_path, pool_spec(mixes))


def test_pools_axis_needs_declared_pools(tmp_path):
    spec = tiny_spec(grid={"sizes": ["0.1M"], "tokens": [2560], "pools": ["clean"]})
    with pytest.raises(ConfigError, match=r"data.mix='clean' needs data.pools \(none declared\)"):
        plan_of(tmp_path, spec)


@pytest.mark.slow  # ~5 s on a loaded 2-core machine (fast-tier budget, issue 16)
def test_dry_run_shows_per_pool_epochs(tmp_path, env):
    path = write_spec(tmp_path / "s.yaml", pool_spec(["clean", "clean:0.5+noisy:0.5"]))
    out = subprocess.run(
        sweep_cmd(path, "--output", str(tmp_path / "out"), "--dry-run"), capture_output=True, text=True,
        cwd=REPO, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "per-pool epochs" in out.stdout and "clean: U=1.02e+03, 8/8 seqs/step, 5.00 epochs" in out.stdout
    assert not (tmp_path / "out").exists()
