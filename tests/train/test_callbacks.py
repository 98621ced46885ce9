"""The trainer's callback contract (scaling_train/callbacks.py): hooks called directly, duck-typed callbacks
adapted, look-alike hooks refused, checkpoint state keyed by ``state_key`` (old checkpoints still load)."""

import pytest
import torch

from scaling_train.callbacks import HOOKS, DuckCallback, TrainerCallback, as_callback
from scaling_train.train import Trainer
from scaling_train.train import checkpoint as ckpt
from scaling_train.train.metrics_stream import TrainerMetrics
from tests.fixtures.runs import tiny_config


class Crash(Exception):
    pass


class CrashAt:  # duck-typed, as third-party callbacks were written before TrainerCallback existed
    def __init__(self, step):
        self.step = step

    def on_before_step(self, trainer, step):
        if step == self.step:
            raise Crash(f"simulated crash at step {step}")


class Recorder:
    """Duck-typed: every hook, each call recorded."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("on_train_begin")

    def split_micro_batch(self, trainer, step):
        self.calls.append("split_micro_batch")
        return False

    def on_micro_batch(self, trainer, out, batch):
        self.calls.append("on_micro_batch")

    def on_before_step(self, trainer, step):
        self.calls.append("on_before_step")

    def on_flush(self, trainer, row):
        self.calls.append("on_flush")
        row["recorded"] = 1.0

    def state_dict(self):
        self.calls.append("state_dict")
        return {"n": len(self.calls)}

    def load_state_dict(self, state):
        self.calls.append("load_state_dict")

    def on_train_end(self, trainer):
        self.calls.append("on_train_end")


class Tally(TrainerCallback):
    def __init__(self):
        self.flushes = 0
        self.loaded = None

    def on_flush(self, trainer, row):
        self.flushes += 1

    def state_dict(self):
        return {"flushes": self.flushes}

    def load_state_dict(self, state):
        self.loaded = state
        self.flushes = state["flushes"]


def test_state_key_is_the_class_name_unless_set_and_an_explicit_key_is_inherited():
    class Plain(TrainerCallback):
        pass

    class Keyed(TrainerCallback):
        state_key = "stable"

    class SubOfPlain(Plain):
        pass

    class SubOfKeyed(Keyed):
        pass

    assert (Plain.state_key, SubOfPlain.state_key) == ("Plain", "SubOfPlain")
    assert (Keyed.state_key, SubOfKeyed.state_key) == ("stable", "stable")
    assert TrainerMetrics.state_key == "TrainerMetrics"
    with pytest.raises(TypeError, match=r"Bad.state_key='' must be a non-empty string"):

        class Bad(TrainerCallback):
            state_key = ""


def test_base_hooks_are_no_ops():
    cb = TrainerCallback()
    assert cb.split_micro_batch(None, 0) is False and cb.state_dict() is None
    for name in ("on_train_begin", "on_train_end"):
        assert getattr(cb, name)(None) is None
    assert set(HOOKS) == {n for n in vars(TrainerCallback) if not n.startswith("_") and n != "state_key"}


def test_a_duck_typed_callback_is_adapted_and_every_hook_is_called_in_order(tmp_path):
    rec = Recorder()
    t = Trainer(
        tiny_config(
            tmp_path / "r",
            **{"train.max_steps": 4, "train.log_every": 2, "train.ckpt_every": 0, "metrics.gns": False},
        ),
        callbacks=[rec],
        log=lambda s: None,
    )
    (wrapped,) = [cb for cb in t.callbacks if isinstance(cb, DuckCallback)]
    assert wrapped.wrapped is rec and wrapped.state_key == "Recorder"
    t.run()
    # 4 steps of one micro-batch (no noise-scale probe to split it), flushes after steps 2 and 4, one
    # checkpoint at the end
    step = ["split_micro_batch", "on_micro_batch", "on_before_step"]
    assert rec.calls == ["on_train_begin", *step, *step, "on_flush", *step, *step, "on_flush"] + [
        "state_dict",
        "on_train_end",
    ]
    saved = ckpt.load_step(tmp_path / "r" / "checkpoints", 4)["callbacks"]
    assert saved["Recorder"] == {"n": 16} and "TrainerMetrics" in saved
    # the row keys a duck callback adds are written like anyone's
    assert '"recorded":1.0' in (tmp_path / "r" / "metrics.jsonl").read_text()


class Misspelled:
    def on_flushh(self, trainer, row):
        pass


class HFStyle(TrainerCallback):
    def on_step_end(self, trainer):
        pass


class NoHooks:
    def flush(self):
        pass


@pytest.mark.parametrize(
    "cb, match",
    [
        (Misspelled(), r"callback <.*Misspelled object at .*> \(tests.train.test_callbacks.Misspelled\) "
                       r"defines on_flushh \(did you mean on_flush\?\): not a trainer hook"),
        (HFStyle(), r"HFStyle\) defines on_step_end.*: not a trainer hook.*The hooks are on_train_begin, "),
        (NoHooks(), r"NoHooks\) defines none of the trainer hooks on_train_begin, .*subclass "
                    r"scaling_train.callbacks.TrainerCallback"),
    ],
)  # fmt: skip
def test_a_hook_that_is_no_hook_is_an_error_naming_the_object_when_the_trainer_is_built(tmp_path, cb, match):
    with pytest.raises(TypeError, match=match):
        Trainer(tiny_config(tmp_path / "r"), callbacks=[cb], log=lambda s: None)


def test_close_names_and_private_helpers():
    class StateDct:
        def state_dct(self):
            return {}

    class Helper(TrainerCallback):
        def _on_anything(self):  # private: not a hook, not an error
            pass

        on_gpu = True  # data, not a method

    with pytest.raises(TypeError, match=r"defines state_dct \(did you mean state_dict\?\)"):
        as_callback(StateDct())
    helper = Helper()
    assert as_callback(helper) is helper


def _old_layout_checkpoint(run_dir, callbacks: dict) -> dict:
    """Rewrite the newest checkpoint's callback states as a dict keyed by ``type(cb).__name__``: the layout
    of every checkpoint written before ``state_key`` existed."""
    path, state = ckpt.load_latest(run_dir / "checkpoints")
    state["callbacks"] = callbacks
    ckpt.save(run_dir / "checkpoints", state["step"], state, keep=5)
    return state


def test_checkpoints_keyed_by_class_name_load(tmp_path):
    run = tmp_path / "r"
    extra = {"train.max_steps": 10, "train.log_every": 2, "train.ckpt_every": 5}
    with pytest.raises(Crash):
        Trainer(tiny_config(run, **extra), callbacks=[CrashAt(7), Tally()], log=lambda s: None).run()
    gns = {"g2": 1.5, "s": 2.5, "w": 0.75, "n": 7}
    _old_layout_checkpoint(run, {"TrainerMetrics": {"gns": gns}, "Tally": {"flushes": 40}})

    class Peek(TrainerCallback):  # load_state_dict runs before on_train_begin: see what was restored
        def on_train_begin(self, trainer):
            (m,) = [cb for cb in trainer.callbacks if isinstance(cb, TrainerMetrics)]
            self.gns = m.tracker.state_dict()

    class Renamed(Tally):  # a renamed class keeps its old checkpoints by naming the key
        state_key = "Tally"

    tally, renamed, peek = Tally(), Renamed(), Peek()
    res = Trainer(tiny_config(run, **extra), callbacks=[tally, renamed, peek], log=lambda s: None).run()
    assert res.resumed_from == 5
    assert peek.gns == gns
    assert tally.loaded == renamed.loaded == {"flushes": 40}
    assert tally.flushes == 40 + 3  # flushes after steps 6, 8, 10
    # and the checkpoints written now have the same layout
    final = ckpt.load_step(run / "checkpoints", 10)["callbacks"]
    assert set(final) == {"TrainerMetrics", "Tally"} and final["Tally"] == {"flushes": 43}
    assert (
        final["TrainerMetrics"]["gns"]["n"] > gns["n"]
    )  # the noise-scale average went on from the old state


def test_a_callback_without_state_saves_nothing(tmp_path):
    run = tmp_path / "r"
    Trainer(
        tiny_config(run, **{"train.max_steps": 2, "train.log_every": 1, "train.eval_batches": 0}),
        callbacks=[CrashAt(-1)],
        log=lambda s: None,
    ).run()
    state = ckpt.load_step(run / "checkpoints", 2)
    assert set(state["callbacks"]) == {"TrainerMetrics"}
    assert isinstance(state["rng_cpu"], torch.Tensor)
