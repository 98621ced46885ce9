import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling_train import config as C
from scaling_train.config import ConfigError
from scaling_train.train import OptimConfig, RunConfig, config_hash, lr_array

REPO = Path(__file__).resolve().parents[2]


def test_overrides_and_types():
    cfg = C.load(
        RunConfig,
        REPO / "configs/train/tiny.yaml",
        ["optim.lr=1e-3", "train.max_steps=7", "model.tie_embeddings=true"],
    )
    assert cfg.optim.lr == 1e-3 and cfg.train.max_steps == 7 and cfg.model.tie_embeddings is True
    assert cfg.model.d_model == 160  # from size 1M


def test_include_model_file():
    cfg = C.load(RunConfig, REPO / "configs/train/tiny.yaml", ["model=configs/models/2M.yaml"])
    assert cfg.model.size == "2M" and cfg.model.seq_len == 128  # merged with the file's model section


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"command line: unknown key 'optim.lrr'; known keys of OptimConfig"),
        ("optim.lr=fast", r"optim.lr='fast' must be a number"),
        ("optim.lr=-1", r"optim.lr=-1.0 must be > 0"),
        (
            "optim.schedule=step",
            r"optim.schedule='step' is not allowed; choose one of \['constant', 'cosine', 'wsd', 'linear'\]",
        ),
        ("model.n_heads=7", r"model.n_heads=7 must divide model.d_model=160"),
        ("train.max_tokens=1e6", r"set exactly one of train.max_steps=200 and train.max_tokens=1000000.0"),
        ("train.micro_batch_size=5", r"train.micro_batch_size=5 must be >= 1 and divide train.batch_size=16"),
        ("model.size=huge", r"model.size='huge' is not a size"),
        ("noequals", r"must look like key=value"),
    ],
)
def test_bad_values_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        C.load(RunConfig, REPO / "configs/train/tiny.yaml", [override])


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(RunConfig, tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=rf"{f}: unknown key 'train.batch_sise'"):
        C.load(RunConfig, f)


def test_cli_fails_before_work_with_exit_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaling_train.cli",
            "train",
            str(REPO / "configs/train/tiny.yaml"),
            f"run_dir={tmp_path}/x",
            "optim.beta2=1.5",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and "optim.beta2=1.5 must be in [0, 1)" in r.stderr
    assert not (tmp_path / "x").exists()


def test_hash_ignores_cosmetics_but_not_semantics():
    a = C.load(RunConfig, REPO / "configs/train/tiny.yaml")
    b = C.load(RunConfig, REPO / "configs/train/tiny.yaml", ["train.progress=false", "run_dir=elsewhere"])
    c = C.load(RunConfig, REPO / "configs/train/tiny.yaml", ["optim.lr=1e-3"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


_BRANCH = [
    "branch.step=20",
    "branch.factor=2",
    "branch.parent_batch_size=8",
    "branch.parent_total_steps=80",
    "train.batch_size=16",
]


@pytest.mark.parametrize(
    "overrides, pinned",
    [
        (None, "38f85bdb"),  # RunConfig()
        ([], "e4499ad0"),  # configs/train/tiny.yaml
        (["run_dir=x", "threads=1", "train.log_every=3", "train.progress=false", "sweep=s",
          "train.keep_steps=[5]", "metrics.gns=false"], "e4499ad0"),  # NON_SEMANTIC only
        (["branch.parent=runs/p", *_BRANCH], "89773bc7"),
        (["branch.parent=elsewhere/p", *_BRANCH], "89773bc7"),  # PATH_FIELDS: the parent's folder
        (["branch.factor=2"], "e4499ad0"),  # no parent: the branch block is left out whole
        (["data.pools=[{name: a, tokens: 1e5}]", "data.mix=a"], "42d67a5b"),
        (["data.pools=[{name: clean, tokens: 2560}, {name: noisy, tokens: 12800, noise: 0.3}]",
          "data.mix=clean:0.5+noisy:0.5"], "b0c01d51"),
        (["data.unique_tokens=5000"], "a0a5eeb6"),
    ],
)  # fmt: skip
def test_config_hashes_are_pinned(overrides, pinned):
    """Hashes computed on the code before semantic_dict's special cases became the LATER_FIELDS table (commit
    647b96a): a run's hash names its folder, so no refactoring may change one."""
    cfg = RunConfig() if overrides is None else C.load(RunConfig, REPO / "configs/train/tiny.yaml", overrides)
    assert config_hash(cfg) == pinned


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd", "linear"])
def test_schedules(schedule):
    o = OptimConfig(lr=1.0, min_lr_ratio=0.1, schedule=schedule, warmup_steps=10, decay_fraction=0.2)
    lr = lr_array(o, 100)
    assert len(lr) == 100
    assert np.allclose(lr[:10], np.arange(1, 11) / 11)  # linear warmup, never 0
    assert lr.max() <= 1.0 + 1e-12
    if schedule == "constant":
        assert np.allclose(lr[10:], 1.0)
    else:
        assert lr[-1] == pytest.approx(0.1)
        assert np.all(np.diff(lr[10:]) <= 1e-12)
    if schedule == "wsd":
        assert np.allclose(lr[10:80], 1.0) and lr[81] < 1.0


def test_help_config_lists_every_key():
    r = subprocess.run(
        [sys.executable, "-m", "scaling_train.cli", "train", "--help-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0
    for key in ("optim.lr", "model.size", "data.corpus", "train.max_tokens", "train.ckpt_every"):
        assert key in r.stdout
