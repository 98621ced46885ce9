"""The contract between ``scaling_train.train.Trainer`` and its callbacks, in one place.

    from scaling_train.callbacks import TrainerCallback     # also exported by scaling_train.train

    class StopAt(TrainerCallback):
        def on_before_step(self, trainer, step):
            ...
    Trainer(cfg, callbacks=[StopAt()]).run()

A callback subclasses ``TrainerCallback`` and overrides the hooks it needs; the others are no-ops. The
trainer calls each hook on every callback, in list order, on every rank:

    load_state_dict(state)                 resumed run: the state its checkpoint holds under ``state_key``
    on_train_begin(trainer)                model, data and run folder ready, before the first step
    per step:
      split_micro_batch(trainer, step)     -> bool; every callback is asked, any True splits the step's
                                           lone micro-batch in two halves (the noise-scale probe)
      on_micro_batch(trainer, out, batch)  after each micro-batch's backward
      on_before_step(trainer, step)        after gradient clipping, before ``optimizer.step()``
      on_flush(trainer, row)               at each metrics flush, before ``row`` is written: add keys to it
      state_dict()                         -> dict | None, at each checkpoint (None: nothing saved)
    on_train_end(trainer)                  after DONE / STOPPED is written

An object that does not subclass it still works (``as_callback`` wraps it: the hooks it defines are
called, the rest are no-ops), as before this contract existed. Either way a method that looks like a hook
but is none (``on_flushh``, ``on_step_end``, ``state_dct``) is an error when the trainer is built, naming
the object, the method and the hook it probably means: before, such a method was silently never called.

This module is in the lowest layer on purpose: callbacks live in several packages (``evals.EvalCallback``
sits below ``train``), so it imports nothing of the package, and ``trainer`` is typed ``Any`` (it is the
``scaling_train.train.Trainer`` calling the hook, which this layer cannot import).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar

HOOKS = (
    "on_train_begin",
    "split_micro_batch",
    "on_micro_batch",
    "on_before_step",
    "on_flush",
    "state_dict",
    "load_state_dict",
    "on_train_end",
)
"""Every hook the trainer calls, in the order of a run (module docstring)."""


class TrainerCallback:
    """Base class of the trainer's callbacks: every hook a no-op (module docstring: when each is called).

    ``state_key`` is the key of the callback's ``state_dict()`` in a checkpoint's ``callbacks``. By default
    it is the class's own name (what checkpoints were keyed by before ``state_key`` existed, so they still
    load). Set it in the class body to keep the key when the class is renamed; subclasses then inherit it.
    """

    state_key: str = "TrainerCallback"  # each subclass: its own name unless set (__init_subclass__)
    _state_key_is_default: ClassVar[bool] = True

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "state_key" in cls.__dict__:
            if not (isinstance(cls.state_key, str) and cls.state_key):
                raise TypeError(f"{cls.__qualname__}.state_key={cls.state_key!r} must be a non-empty string")
            cls._state_key_is_default = False
        elif cls._state_key_is_default:
            cls.state_key = cls.__name__

    def on_train_begin(self, trainer: Any) -> None:
        """Once per run (resumed runs too), after setup and after ``load_state_dict``."""

    def split_micro_batch(self, trainer: Any, step: int) -> bool:
        """Before 0-based step ``step``: True to run the step's lone micro-batch as two halves, each loss
        weighted by its share of the sequences (the same gradient). Asked of every callback."""
        return False

    def on_micro_batch(self, trainer: Any, out: Any, batch: Any) -> None:
        """After the backward of one micro-batch: ``out`` is the model's output (``loss``, per-token
        statistics), ``batch`` the ``data.Batch`` on the device."""

    def on_before_step(self, trainer: Any, step: int) -> None:
        """After backward and gradient clipping of 0-based step ``step``, before ``optimizer.step()``."""

    def on_flush(self, trainer: Any, row: dict[str, Any]) -> None:
        """At each metrics flush: ``row`` (step, tokens, loss, lr, ...) is written after every callback has
        seen it, so keys added here land in ``metrics.jsonl`` and the sinks."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to save in each checkpoint under ``state_key``; None (the default): nothing saved."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run: the ``state_dict()`` its checkpoint saved under ``state_key`` (only if it has one)."""

    def on_train_end(self, trainer: Any) -> None:
        """Once per run that trained, after DONE (or STOPPED) is written and every rank got there."""


class DuckCallback(TrainerCallback):
    """A callback that does not subclass ``TrainerCallback``, adapted: the hooks ``wrapped`` defines are
    its own bound methods (looked up once, here), the rest no-ops. Its ``state_key`` is ``wrapped``'s
    ``state_key`` if it has one, else its class name (the key checkpoints have always used)."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped
        found = [name for name in HOOKS if getattr(wrapped, name, None) is not None]
        if not found:
            raise TypeError(
                f"callback {_describe(wrapped)} defines none of the trainer hooks {', '.join(HOOKS)}; "
                "subclass scaling_train.callbacks.TrainerCallback and override the hooks it needs"
            )
        for name in found:
            hook = getattr(wrapped, name)
            if not callable(hook):
                raise TypeError(f"callback {_describe(wrapped)}: {name}={hook!r} must be a method")
            setattr(self, name, hook)  # the instance attribute shadows the no-op
        key = getattr(wrapped, "state_key", None)
        self.state_key = key if isinstance(key, str) and key else type(wrapped).__name__

    def __repr__(self) -> str:
        return f"DuckCallback({self.wrapped!r})"


def as_callback(obj: object) -> TrainerCallback:
    """``obj`` itself when it is a ``TrainerCallback``, else wrapped in a ``DuckCallback``.

    Raises TypeError, naming the object, when it defines a method that looks like a hook but is none
    (a name starting with ``on_``, or close to a hook's name): such a hook would never be called."""
    bad = [
        (name, difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8))
        for name in dir(obj)
        if not name.startswith("_")
        and name not in HOOKS
        and (name.startswith("on_") or difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8))
        and _is_method(inspect.getattr_static(obj, name))
    ]
    if bad:
        what = "; ".join(f"{n} (did you mean {near[0]}?)" if near else n for n, near in bad)
        raise TypeError(
            f"callback {_describe(obj)} defines {what}: not a trainer hook, so the trainer would never call it. "
            f"The hooks are {', '.join(HOOKS)} (scaling_train.callbacks.TrainerCallback); rename it, or make "
            "it private (a leading underscore) if it is a helper"
        )
    return obj if isinstance(obj, TrainerCallback) else DuckCallback(obj)


def _is_method(attr: Any) -> bool:
    return callable(attr) or isinstance(attr, (classmethod, staticmethod))


def _describe(obj: object) -> str:
    return f"{obj!r} ({type(obj).__module__}.{type(obj).__qualname__})"
