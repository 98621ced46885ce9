"""Scaling laws: pure numpy/scipy fits over arrays, typed frozen results, the law in each docstring.

The names below load their module on first use (PEP 562): the training process imports
``GradientNoiseScale`` only, and importing every fit here (scipy.optimize) cost it ~0.7 s per process."""

from __future__ import annotations

import importlib
from typing import Any

_HOME: dict[str, str] = {  # public name -> the module that defines it
    "BatchSweep": "batch",
    "BatchSweepFit": "batch",
    "CBSCalibration": "batch",
    "CBSPrediction": "batch",
    "CBSScalingFit": "batch",
    "CalibratedCBS": "batch",
    "ChinchillaFit": "chinchilla",
    "CriticalBatchFit": "batch",
    "Curve": "curve",
    "DataConstrainedFit": "data_constrained",
    "DataPoolsFit": "pools",
    "DivergedRun": "data_constrained",
    "DownstreamFit": "overtraining",
    "GradientNoiseScale": "noise_scale",
    "IsoFLOPFit": "isoflop",
    "IsoFLOPParabola": "isoflop",
    "LaunchRanking": "design",
    "LaunchScore": "design",
    "LossPrediction": "predict",
    "MultiPowerFit": "curve",
    "MultiPowerPrior": "curve",
    "NotEnoughDataError": "curve",
    "OvertrainingFit": "overtraining",
    "PassUntilFit": "sample",
    "PoolChoice": "pools",
    "PoolParams": "pools",
    "SampleScores": "sample",
    "StepsToTargetFit": "batch",
    "SweepFit": "predict",
    "find_diverged": "data_constrained",
    "batch_sweeps_from_curves": "batch",
    "fit_batch_sweep": "batch",
    "fit_cbs_calibration": "batch",
    "fit_cbs_scaling": "batch",
    "fit_chinchilla": "chinchilla",
    "fit_critical_batch": "batch",
    "fit_data_constrained": "data_constrained",
    "fit_data_pools": "pools",
    "fit_downstream": "overtraining",
    "fit_isoflop": "isoflop",
    "fit_multipower": "curve",
    "fit_overtraining": "overtraining",
    "fit_pass_until": "sample",
    "fit_pass_until_from_loglik": "sample",
    "fit_sweep": "predict",
    "fit_steps_to_target": "batch",
    "steps_to_target": "batch",
    "hoffmann_grid": "chinchilla",
    "predict_final_loss": "predict",
    "rank_by_information": "design",
    "sample_scores": "sample",
    "schedule_from_samples": "curve",
}

__all__ = list(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
