"""The online fitter of one sweep: tail every run folder, refit, write predictions atomically.

    fitter = SweepFitter(sweep_dir)
    fitter.step()      # poll all runs (incrementally), refit what changed, write the JSON files

Per run, ``predictions.json``: the final loss predicted by ``laws.predict_final_loss`` from the run's
training-loss curve and its full planned LR schedule, with every other run of the sweep (any size or
budget; N and tokens per step from their configs) as references -- the finished ones are used, the running
ones listed in ``running_references_ignored`` -- and the predicted remaining curve with its band. A run that has not logged a row yet is predicted from the others alone.
Every prediction published for a running run is also appended to ``predictions.jsonl`` (step, fraction,
loss, low, high, references, mode, time): the live record of how early the prediction was right. Per sweep, ``sweep_law.json``: Chinchilla
``L(N, D) = E + A / N**alpha + B / D**beta`` and the IsoFLOP optimum over (N, D, final loss) -- observed
for finished runs, predicted for running ones -- and Kaplan's ``B_crit(L) = B_star / L**(1/alpha_B)``
over (loss, gradient noise scale) pairs of all runs (``critical_batch``, ``of: gns_b_simple``), and the
critical batch measured (batch sweeps, branches), calibrated against the noise scale and predicted at
every run's predicted final loss (``cbs_measured``, ``cbs_calibration``, ``cbs_predicted``; the run's
share in its ``predictions.json``; ``fitter/cbs.py``). Diverged runs (a non-finite loss) are marked and
left out. In an adaptive sweep (``SWEEP_DIR/adaptive.json``, written by the sweep from its ``adaptive:``
block) the fitter applies the policy (``fitter/adaptive.py``) to every running run's published predictions
and requests a stop by writing ``RUN/STOP``; the trainer checkpoints and writes ``RUN/STOPPED``. A stopped
run keeps being predicted from the others (status ``stopped``) and enters the laws with its predicted
final loss, weighted by its interval like every predicted point. The fitter's own offsets and compact rows live in ``SWEEP_DIR/.fitter_state.json`` so a
restarted fitter continues where it stopped instead of re-reading every file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scaling_train._io import atomic_write
from scaling_train.fitter.adaptive import FINAL_LOSS_NOISE
from scaling_train.fitter.tail import RunTail, plan_runs
from scaling_train.metrics.config import REPEAT_EPOCHS, law_burn_in, memorised_loss_reason
from scaling_train.metrics.jsonl import clean_for_json
from scaling_train.run_folder import PREDICTIONS, PREDICTIONS_LOG, STOP, STOPPED, STOPPED_ARCHIVES, find_runs

STATE_FILE = ".fitter_state.json"
# the state is saved at most this often while following, and when follow returns: it holds every run's rows,
# and rewriting it on every poll with a new row was ~40% of the live fitter's CPU
STATE_EVERY_S = 30.0
LAW_EVERY_S = 15.0  # the sweep law is rewritten at most this often while no run ends (SweepFitter.step)
LAW_COST_FACTOR = 10.0  # ... and at most every this many times its own last wall time (<= 10% of a core)
ADAPTIVE_FILE = "adaptive.json"  # the sweep's adaptive policy (absent: no run is ever stopped early)
MIN_POINTS = 3
CURVE_POINTS = 24  # steps of the predicted remaining curve in predictions.json


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write a temp file in the same folder, fsync, rename: readers see the old or the new file, whole."""
    atomic_write(path, json.dumps(clean_for_json(obj), indent=1))


def _append_prediction(run_dir: Path, pred: dict[str, Any], total_steps: int | None) -> None:
    """Append the published prediction to ``RUN/predictions.jsonl`` (the record of what was predicted when;
    a torn last line after a crash is cut by the writer and skipped by readers)."""
    from scaling_train.metrics.jsonl import JsonlWriter

    row = {
        "step": pred["step"], "fraction": pred["step"] / total_steps if total_steps else None,
        "loss": pred["loss"], "low": pred["low"], "high": pred["high"],
        "references": pred.get("references", []), "mode": pred.get("mode"), "time": pred["updated"],
        "rel_scale": pred.get("rel_scale"), "read_noise": pred.get("read_noise"),
    }  # fmt: skip
    cur = pred.get("curve") or {}
    # the predicted remaining curve and band, so a report can show it against what happened
    if cur.get("step"):
        row["curve"] = {k: [round(float(v), 5) for v in cur[k]] for k in ("step", "loss", "low", "high")}
    w = JsonlWriter(run_dir / PREDICTIONS_LOG)
    try:
        w.write(row)
    finally:
        w.close()


def _keep_stop_interval(run_dir: Path, pred: dict[str, Any]) -> None:
    """A run stopped early keeps at least the interval its stop rested on (``STOPPED``'s ``request``, the
    policy's ``stop_interval``): a later refit from more finished references may narrow the prediction, but
    the stop was decided on that interval. Without a fresh prediction, the request's numbers are used."""
    try:
        req = json.loads((run_dir / STOPPED).read_text() or "{}").get("request") or {}
    except (OSError, ValueError, AttributeError):
        return
    lo, hi, loss = req.get("low"), req.get("high"), req.get("loss")
    if not all(isinstance(v, (int, float)) for v in (lo, hi, loss)):
        return
    pred["stop_request"] = {k: req.get(k) for k in ("step", "loss", "low", "high", "reason")}
    if pred.get("loss") is None:
        pred.update(loss=loss, low=lo, high=hi)
        pred.pop("error", None)
    else:
        pred["low"], pred["high"] = min(pred["low"], lo), max(pred["high"], hi)


def _repetition_law(pts: list[dict[str, Any]]) -> dict[str, Any]:
    """When any run repeats its data (D / U > REPEAT_EPOCHS), the data-constrained law (Muennighoff et al.
    2023, ``laws.fit_data_constrained``) over (N, D, U, loss) is the sweep's law and says so: Chinchilla
    ignores repetition and over-credits repeated tokens. Otherwise Chinchilla stays the law."""
    rep = [p["run"] for p in pts if p.get("U") and p["D"] / p["U"] > REPEAT_EPOCHS]
    if not rep:
        return {"law": "chinchilla", "law_reason": "no run repeats its training data"}
    out: dict[str, Any] = {
        "repeating_runs": rep,
        "epochs": {p["run"]: p["D"] / p["U"] for p in pts if p.get("U")},
    }
    # held-out loss only: on a repeated token the training loss measures memorisation (a tiny model trained
    # 8 epochs on 5e4 tokens ends at training loss 1.0 and validation loss 5.5)
    usable = [p for p in pts if p.get("U") and p.get("eval_loss") is not None]
    out["loss_used"] = "eval_loss"
    try:
        from scaling_train.laws import fit_data_constrained

        f = fit_data_constrained(
            np.array([p["N"] for p in usable]), np.array([p["D"] for p in usable]),
            np.array([p["U"] for p in usable]), np.array([p["eval_loss"] for p in usable]),
        )  # fmt: skip
        out["data_constrained"] = {
            k: getattr(f, k)
            for k in ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star", "rho", "objective", "n_points")
        }
        out["data_constrained"]["rho_reason"] = f.rho_reason  # fitted from >= 3 repeating sizes, else 0
        out["data_constrained"]["diverged"] = [usable[d.index]["run"] for d in f.diverged]
        out["law"] = "data_constrained"
        out["law_reason"] = f"{len(rep)} run(s) repeat their training data (D / U > {REPEAT_EPOCHS})"
    except (ValueError, RuntimeError, FloatingPointError) as e:
        out["data_constrained"] = {"error": str(e), "n_points": len(usable)}
        out["law"] = "chinchilla"
        out["law_reason"] = (
            f"{len(rep)} run(s) repeat their data, but the data-constrained law could not be fitted ({e}); "
            "the Chinchilla fit ignores repetition"
        )
    return out


class SweepFitter:
    """Tails the runs of ``sweep_dir``; ``only`` restricts the written predictions to one run (in-process)."""

    def __init__(
        self, sweep_dir: str | Path, *, only: str | None = None, sweep_law: bool = True, log=print
    ) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.only, self.write_sweep_law, self.log = only, sweep_law, log
        self.tails: dict[str, RunTail] = {}
        self._lr: dict[str, np.ndarray | None] = {}
        self._fitted: dict[str, tuple] = {}  # run -> versions its prediction was computed from
        self.predictions: dict[str, dict[str, Any]] = {}
        self.state_path = self.sweep_dir / STATE_FILE
        self.polls = 0
        self.last_law: dict[str, Any] | None = None  # the sweep law last written
        self._law_ended: frozenset = frozenset()  # the runs' ended states when it was written
        self._law_time = 0.0
        self._law_cost = 0.0  # wall seconds the last law rewrite took
        self._state_dirty, self._state_time = False, 0.0  # rows read since the last save; its time
        self._policy_key: tuple | None = None
        self._policy_obj = None
        self._launch_head: str | None = None  # the run launch_order.json put first, last written
        # the sweep's Chinchilla law last fitted (law): the adaptive policy's law_tolerance reads it
        self._chinchilla = None
        self._law_noise = FINAL_LOSS_NOISE  # the sweep law's point noise (fit_known_law), for law_excess
        if only is None:
            self._load_state()

    # -------------------------------------------------------------- state
    def _load_state(self) -> None:
        try:
            st = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return  # no state or a broken one: start from the files (they are the truth)
        for name, d in st.get("runs", {}).items():
            run_dir = self.sweep_dir / d["rel"]
            if run_dir.is_dir():
                t = RunTail(run_dir)
                t.load_state(d)
                self.tails[name] = t

    def _save_state(self) -> None:
        """The tails' offsets and rows, one consistent snapshot (a restart re-reads what came after it)."""
        self._state_dirty, self._state_time = False, time.time()
        runs = {}
        for name, t in self.tails.items():
            d = t.state()
            d["rel"] = str(t.run_dir.relative_to(self.sweep_dir))
            runs[name] = d
        write_json_atomic(self.state_path, {"runs": runs, "time": time.time()})

    # -------------------------------------------------------------- polling
    def poll(self) -> set[str]:
        """Pick up new runs and read appended rows; returns the names of runs that changed."""
        for run_dir in find_runs(self.sweep_dir):
            if run_dir.name not in self.tails:
                self.tails[run_dir.name] = RunTail(run_dir)
                self.log(f"[fit] new run {run_dir.name}")
        changed = {n for n, t in self.tails.items() if t.poll()}
        self.polls += 1
        return changed

    def step(self) -> set[str]:
        """One poll + refit + write cycle. The sweep law (a multistart Chinchilla fit and the other laws, ~1 s of
        CPU) is rewritten when a run finished, stopped or diverged since the last one, and otherwise at most
        every ``LAW_EVERY_S`` seconds and every ``LAW_COST_FACTOR`` times its own cost (on 2 cores the fitter
        shares the CPU with the runs it follows): the per-run predictions of short runs must not wait for it."""
        changed = self.poll()
        refit = self._refit()
        if refit and self.write_sweep_law and self.only is None:
            ended = frozenset(
                (n, p.get("status")) for n, p in self.predictions.items() if p.get("status") != "running"
            )
            if (
                self.last_law is None
                or ended != self._law_ended
                or time.time() - self._law_time >= max(LAW_EVERY_S, LAW_COST_FACTOR * self._law_cost)
            ):
                t0 = time.time()
                self.last_law = self.write_law()
                now = time.time()
                self._law_ended, self._law_time, self._law_cost = ended, now, now - t0
        if changed and self.only is None:
            self._state_dirty = True
        if self._state_dirty and time.time() - self._state_time >= STATE_EVERY_S:
            self._save_state()
        return refit

    def save_state(self) -> None:
        """Save the state now if rows were read since it was last saved (``follow`` does when it returns)."""
        if self._state_dirty:
            self._save_state()

    @property
    def all_done(self) -> bool:
        """Every run is DONE, stopped early or diverged, including runs the sweep planned (``plan.json``) but has not
        started yet, so ``--until-done`` does not exit between the last running run and the next."""
        if not self.tails or not all(
            t.done or t.stopped or t.diverged_at is not None for t in self.tails.values()
        ):
            return False
        try:
            planned = {r["name"] for r in self._plan_runs()}
        except (KeyError, TypeError):
            planned = set()
        return planned <= set(self.tails)

    # -------------------------------------------------------------- per-run predictions
    def _curve(self, t: RunTail):
        from scaling_train.laws import Curve

        if t.name not in self._lr or self._lr[t.name] is None:
            self._lr[t.name] = t.planned_lr()
        lr = self._lr[t.name]
        if lr is None:
            return None
        steps, losses = t.loss_points(len(lr))
        return Curve(
            steps, losses, lr, t.name, n_params=t.n_params, tokens_per_step=t.batch_tokens,
            burn_in=law_burn_in(t.config),
        )  # fmt: skip

    def _references(self, t: RunTail) -> list[RunTail]:
        return [
            r
            for r in self.tails.values()
            if r is not t
            and r.diverged_at is None
            and len(r.rows) >= MIN_POINTS
            and r.config is not None
            and memorised_loss_reason(r.config) is None  # a memorised training curve is no one's reference
        ]

    def _predict(self, t: RunTail, refs: list[RunTail]) -> dict[str, Any]:
        """The prediction fields of a running or stopped run: its final loss from its curve and its references'
        (``laws.predict_final_loss``), or ``loss: None`` and the ``error`` that prevented one."""
        from scaling_train.laws import NotEnoughDataError, predict_final_loss

        try:
            curve = self._curve(t)
            if curve is None:
                raise NotEnoughDataError("no rows or no LR schedule yet")
            ref_curves = [c for c in (self._curve(r) for r in refs) if c is not None]
            p = predict_final_loss(curve, ref_curves, curve_points=CURVE_POINTS)
            if not all(math.isfinite(v) for v in (p.loss, p.low, p.high)):  # never publish a nan
                raise FloatingPointError(f"non-finite prediction {p.loss} [{p.low}, {p.high}]")
        except (ValueError, RuntimeError, FloatingPointError) as e:
            return {"loss": None, "low": None, "high": None, "error": f"{type(e).__name__}: {e}"}
        return dict(
            loss=p.loss, low=p.low, high=p.high, n_used=p.n_used, n_spikes=p.n_spikes,
            extrapolation=p.extrapolation, mode=p.mode, rel_scale=p.rel_scale, read_noise=p.read_noise,
            references=[c.name for c in ref_curves if c.name not in p.ignored],
            running_references_ignored=list(p.ignored),
            candidates=p.candidates, weights=p.weights,
            curve={"step": p.curve_steps.tolist(), "loss": p.curve.tolist(),
                   "low": p.curve_low.tolist(), "high": p.curve_high.tolist()},
        )  # fmt: skip

    def _refit(self) -> set[str]:
        refit = set()
        names = [self.only] if self.only is not None else list(self.tails)
        for name in names:
            t = self.tails.get(name)
            if t is None or t.config is None:
                continue
            refs = self._references(t)
            # a reference counts by its points only once it is DONE: predict_final_loss leaves running ones out,
            # so a running run's new point (with 2 in flight, every other poll) refits nobody else
            key = (
                t.law_version,
                t.stopped,
                tuple(sorted((r.name, r.law_version if r.done else -1) for r in refs)),
            )
            if self._fitted.get(name) == key:
                continue
            self._fitted[name] = key
            pred: dict[str, Any] = {
                "run": name,
                "step": t.last_step,
                "total_steps": t.total_steps,
                "N": t.n_params,
                "D": t.total_tokens,
                "malformed_lines": t.malformed,
                "updated": time.time(),
            }
            last = t.rows[t.last_step] if t.rows else {}
            pred["observed_loss"] = t.last_law_loss()
            if t.law_column != "loss":
                pred["law_loss"] = t.law_column
            if t.diverged_at is not None:
                pred.update(status="diverged", diverged_at_step=t.diverged_at, loss=None, low=None, high=None)
            elif t.done and t.total_steps and t.last_step >= t.total_steps:
                lo = t.last_law_loss()
                pred.update(status="done", loss=lo, low=lo, high=lo, final_eval_loss=last.get("eval_loss"))
            else:
                pred["status"] = "stopped" if t.stopped else "running"
                why_not = memorised_loss_reason(t.config)
                if why_not is not None:  # its training loss past epoch 1 is memorisation: no law predicts it
                    pred.update(loss=None, low=None, high=None, error=why_not)
                else:
                    pred.update(self._predict(t, refs))
                if t.stopped:
                    _keep_stop_interval(t.run_dir, pred)
            self.predictions[name] = pred
            if pred.get("status") == "running" and pred.get("loss") is not None:
                _append_prediction(t.run_dir, pred, t.total_steps)
                self._apply_policy(t, pred)  # reads the record just appended; adds its decision to pred
            write_json_atomic(t.run_dir / PREDICTIONS, pred)
            refit.add(name)
        return refit

    # -------------------------------------------------------------- adaptive policy
    def policy(self):
        """The sweep's ``AdaptivePolicy`` from ``adaptive.json``, or None (no file, or a bad one: logged)."""
        from scaling_train.fitter.adaptive import AdaptivePolicy

        path = self.sweep_dir / ADAPTIVE_FILE
        try:
            st = path.stat()
        except OSError:
            self._policy_key, self._policy_obj = None, None
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._policy_key:
            self._policy_key, self._policy_obj = key, None
            try:
                self._policy_obj = AdaptivePolicy.from_dict(json.loads(path.read_text()), source=str(path))
            except (OSError, ValueError) as e:
                self.log(f"[fit] adaptive policy ignored, no run will be stopped early: {e}")
        return self._policy_obj

    def _plan_runs(self) -> list[dict[str, Any]]:
        """plan.json's runs (``fitter.tail.plan_runs``)."""
        return plan_runs(self.sweep_dir)

    def _planned_flops(self) -> dict[str, float]:
        """Run name -> the sweep's planned training FLOPs (plan.json ``flops``: FLOPs per token with attention and
        the LM head, times D; an IsoFLOP grid's budget), for the runs the plan has."""
        try:
            return {str(r["name"]): float(r["flops"]) for r in self._plan_runs() if r.get("flops")}
        except (KeyError, TypeError, ValueError):
            return {}

    def _planned(self) -> list[tuple[str, float, float]]:
        """(name, N, D) of every planned run (plan.json) and every run folder found."""
        out: dict[str, tuple[str, float, float]] = {}
        try:
            for r in self._plan_runs():
                out[r["name"]] = (r["name"], float(r["n_params"]), float(r["tokens"]))
        except (KeyError, TypeError, ValueError):
            pass
        for n, t in self.tails.items():
            if n not in out and t.n_params and t.total_tokens:
                out[n] = (n, t.n_params, t.total_tokens)
        return list(out.values())

    def _apply_policy(self, t: RunTail, pred: dict[str, Any]) -> None:
        """Under an adaptive policy: decide from the run's published predictions whether to stop it, and
        request the stop (``RUN/STOP``, written once). The decision and its reason go into ``pred`` (the caller
        writes predictions.json once, after this)."""
        pol = self.policy()
        if pol is None or self.only is not None:
            return
        if any(t.run_dir.glob(STOPPED_ARCHIVES)):  # stopped before and resumed on purpose: train to the end
            pred["adaptive"] = {"stop": False, "reason": "resumed after an early stop (--resume-stopped)"}
            return
        exempt = pol.exempt(self._planned())
        if t.name in exempt:
            pred["adaptive"] = {"stop": False, "reason": exempt[t.name]}
            return
        from scaling_train.metrics.jsonl import read_jsonl

        history = read_jsonl(t.run_dir / PREDICTIONS_LOG).rows
        stop, why = pol.decide(history, lambda: self._law_excess(pol, t.name, history))
        pred["adaptive"] = {"stop": stop, "reason": why}
        if stop and not (t.run_dir / STOP).exists():
            loss, low, high = pol.stop_interval(history)  # the union of the intervals the stop rests on
            request = {
                "reason": why, "step": pred["step"], "fraction": history[-1].get("fraction"),
                "loss": loss, "low": low, "high": high, "time": time.time(),
            }  # fmt: skip
            write_json_atomic(t.run_dir / STOP, request)
            self.log(f"[fit] {t.name}: stop requested at step {pred['step']}/{t.total_steps}: {why}")

    def _law_excess(self, pol, name: str, history: list[dict[str, Any]]) -> tuple[float | None, str]:
        """``fitter.adaptive.law_excess`` for stopping run ``name`` now: it (at the interval its stop would rest
        on) and every run already stopped or asked to stop (at its prediction's interval) against every other
        planned run finishing, on the sweep law last fitted (``law``)."""
        from scaling_train.fitter.adaptive import law_excess

        stopped, finishing = [], []
        for n, N, D in self._planned():
            t, p = self.tails.get(n), self.predictions.get(n, {})
            if n == name:
                stopped.append((N, D, *pol.stop_interval(history)))
            elif (
                t is not None and (t.stopped or (t.run_dir / STOP).exists())
                and all(isinstance(p.get(k), (int, float)) for k in ("loss", "low", "high"))
            ):  # fmt: skip
                stopped.append((N, D, p["loss"], p["low"], p["high"]))
            else:
                finishing.append((N, D))
        return law_excess(stopped, finishing, fit=self._chinchilla, noise=self._law_noise)

    # -------------------------------------------------------------- sweep laws
    def sweep_points(self) -> list[dict[str, Any]]:
        """(N, D, final loss) of every healthy run: observed when done, else predicted, with its weight in
        the law fits (``prediction_weight``: 1 observed, less the wider the predicted interval; ``law`` weighs them
        again against the law's misfit, ``fitter.adaptive.fit_known_law``) and its interval (None observed)."""
        from scaling_train.fitter.adaptive import known_interval, prediction_weight

        pts = []
        flops = self._planned_flops()
        for name, t in sorted(self.tails.items()):
            p = self.predictions.get(name, {})
            loss = p.get("loss")
            if t.diverged_at is not None or loss is None or not (t.n_params and t.total_tokens):
                continue
            pts.append(
                {"run": name, "N": t.n_params, "D": t.total_tokens, "B": t.batch_tokens, "loss": loss,
                 "eval_loss": p.get("final_eval_loss"), "U": t.unique_tokens,
                 "source": "observed" if p.get("status") == "done" else
                 "stopped" if p.get("status") == "stopped" else "predicted",
                 "weight": 1.0 if p.get("status") == "done" else
                 prediction_weight(loss, p.get("low") or loss, p.get("high") or loss)}
            )  # fmt: skip
            pts[-1]["low"], pts[-1]["high"] = (
                (None, None) if p.get("status") == "done" else known_interval(p.get("low"), p.get("high"))
            )
            if name in flops:
                pts[-1]["C"] = flops[name]
        return pts

    def law(self) -> dict[str, Any]:
        from scaling_train.fitter.adaptive import fit_known_law
        from scaling_train.laws import fit_critical_batch, fit_isoflop

        pts = self.sweep_points()
        out: dict[str, Any] = {
            "updated": time.time(),
            "points": pts,
            "diverged": sorted(n for n, t in self.tails.items() if t.diverged_at is not None),
            "malformed_lines": {n: t.malformed for n, t in self.tails.items() if t.malformed},
            "n_runs": len(self.tails),
        }
        N = np.array([p["N"] for p in pts])
        D = np.array([p["D"] for p in pts])
        L = np.array([p["loss"] for p in pts])
        chinchilla = None
        try:
            known = fit_known_law([(p["N"], p["D"], p["loss"], p["low"], p["high"]) for p in pts])
            chinchilla, self._law_noise = known.fit, known.noise
            for p, w in zip(pts, known.weights):
                p["weight"] = w
            self._chinchilla = chinchilla
            out["chinchilla"] = {
                k: getattr(chinchilla, k) for k in ("E", "A", "B", "alpha", "beta", "objective", "n_points")
            }
            out["chinchilla"]["point_noise"] = known.noise
        except (ValueError, RuntimeError, FloatingPointError) as e:
            out["chinchilla"] = {"error": str(e), "n_points": len(pts)}
        out["launch_order"] = self._write_launch_order(pts, chinchilla)
        out.update(_repetition_law(pts))
        from scaling_train.fitter.pools import data_pools_law  # runs on data pools: the pool law

        out.update(data_pools_law(self.tails, self.predictions, current=out["law"]))
        try:
            # grouped by the planned budget where every point has one (6 N D leaves out attention and the head)
            C = np.array([p["C"] for p in pts]) if pts and all("C" in p for p in pts) else None
            f = fit_isoflop(N, D, L, compute=C)
            out["isoflop"] = {
                "a": f.a, "coef_n": f.coef_n, "b": f.b, "coef_d": f.coef_d,
                "optima": [{"C": q.C, "N_opt": q.N_opt, "D_opt": q.D_opt, "L_opt": q.L_opt} for q in f.parabolas],
            }  # fmt: skip
        except (ValueError, RuntimeError, FloatingPointError) as e:
            out["isoflop"] = {"error": str(e)}
        # B_crit(L): (loss, B_simple) pairs along every healthy run, past its first 20% of steps
        bl, bb = [], []
        for t in self.tails.values():
            if t.diverged_at is not None or not t.total_steps:
                continue
            for s, r in t.rows.items():
                b, lo = r.get("gns_b_simple"), r.get("loss")
                if s > 0.2 * t.total_steps and b and lo and b > 0 and lo > 0 and math.isfinite(b):
                    bl.append(lo)
                    bb.append(b)
        of = "gns_b_simple"  # a law of the noise scale; the critical batch itself is cbs_* below
        try:
            f = fit_critical_batch(np.array(bl), np.array(bb))
            out["critical_batch"] = {
                "B_star": f.B_star,
                "alpha_B": f.alpha_B,
                "rmse_log": f.rmse_log,
                "n_points": len(bl),
                "of": of,
            }
        except (ValueError, RuntimeError, FloatingPointError) as e:
            out["critical_batch"] = {"error": str(e), "n_points": len(bl), "of": of}
        from scaling_train.fitter.cbs import critical_batch_block  # measured, calibrated, predicted

        out.update(critical_batch_block(self.tails, self.predictions, out["critical_batch"],
                                        sweep_dir=self.sweep_dir, chinchilla=out.get("chinchilla")))  # fmt: skip
        from scaling_train.fitter.tasks import fit_task_laws  # task laws from the evals' row scalars

        out["tasks"] = fit_task_laws(self.tails, self.predictions)
        return out

    def _write_launch_order(self, pts: list[dict[str, Any]], chinchilla) -> dict[str, Any] | None:
        """Under ``launch_order: uncertainty``: the planned runs not started yet, ranked by how much each would
        reduce the uncertainty of the law at the policy's target compute per FLOP (``launch_ranking``, on the
        sweep law ``chinchilla`` just fitted to ``pts``), written to SWEEP_DIR/launch_order.json for the local
        backend; returns the record (None without that policy)."""
        from scaling_train.fitter.adaptive import LAUNCH_ORDER_FILE, launch_ranking

        pol = self.policy()
        if pol is None or pol.launch_order != "uncertainty" or self.only is not None:
            return None
        planned = self._planned()
        pending = [(n, N, D) for n, N, D in planned if n not in self.tails]
        known = []
        for p in pts:
            pred = self.predictions.get(p["run"], {})
            interval = (None, None) if p["source"] == "observed" else (pred.get("low"), pred.get("high"))
            known.append((p["N"], p["D"], p["loss"], *interval))
        compute = max((6.0 * N * D for _, N, D in planned), default=0.0)
        ranking, why = (
            launch_ranking(pol, known, pending, compute, fit=chinchilla)
            if compute > 0
            else (None, "no planned runs")
        )
        rec: dict[str, Any] = {"updated": time.time(), "why": why, "order": []}
        if ranking is not None:
            rec.update(ranking.to_dict())
        write_json_atomic(self.sweep_dir / LAUNCH_ORDER_FILE, rec)
        head = rec["order"][0]["name"] if rec["order"] else None
        if head != self._launch_head and pending:
            self.log(f"[fit] launch order: {head or 'the planned order'} next ({why})")
        self._launch_head = head
        return rec

    def write_law(self) -> dict[str, Any]:
        from scaling_train.fitter.cbs import run_fields

        law = self.law()
        write_json_atomic(self.sweep_dir / "sweep_law.json", law)
        # each run's critical batch in its predictions.json: noise scale, measured, predicted
        for name, pred in self.predictions.items():
            t = self.tails.get(name)
            if t is not None:
                pred.update(run_fields(name, t, law))
                write_json_atomic(t.run_dir / PREDICTIONS, pred)
        return law

    # -------------------------------------------------------------- loop
    def follow(
        self,
        *,
        interval: float = 10.0,
        until_done: bool = False,
        max_polls: int | None = None,
        on_refit: Callable[[set[str]], None] | None = None,
    ) -> int:
        """Poll until stopped; ``on_refit(names)`` is called whenever a prediction changed (the command
        line refreshes report.html and logs to W&B there: the fitter imports no report code)."""
        try:
            return self._follow(interval, until_done, max_polls, on_refit)
        finally:
            self.save_state()

    def _follow(self, interval: float, until_done: bool, max_polls: int | None, on_refit) -> int:
        while True:
            refit = self.step()
            if refit and on_refit is not None:
                on_refit(refit)
            if refit:
                for n in sorted(refit):
                    p = self.predictions[n]
                    lo = p.get("loss")
                    txt = (
                        f"{lo:.4f} [{p['low']:.4f}, {p['high']:.4f}]"
                        if lo is not None
                        else p.get("error", "-")
                    )
                    self.log(f"[fit] {n}: step {p['step']}/{p['total_steps']} {p['status']} -> {txt}")
            if until_done and self.all_done:
                return 0
            if max_polls is not None and self.polls >= max_polls:
                return 0
            time.sleep(interval)
