"""Scaling laws: pure numpy/scipy fits over arrays, typed frozen results, the law in each docstring."""

from .batch import (
    BatchSweep,
    BatchSweepFit,
    CBSPrediction,
    CBSScalingFit,
    CriticalBatchFit,
    GradientNoiseScale,
    StepsToTargetFit,
    fit_batch_sweep,
    fit_cbs_scaling,
    fit_critical_batch,
    fit_steps_to_target,
)
from .chinchilla import ChinchillaFit, fit_chinchilla, hoffmann_grid
from .curve import (
    Curve,
    MultiPowerFit,
    MultiPowerPrior,
    NotEnoughDataError,
    fit_multipower,
    schedule_from_samples,
)
from .data_constrained import DataConstrainedFit, DivergedRun, find_diverged, fit_data_constrained
from .isoflop import IsoFLOPFit, IsoFLOPParabola, fit_isoflop
from .overtraining import DownstreamFit, OvertrainingFit, fit_downstream, fit_overtraining
from .predict import LossPrediction, SweepFit, fit_sweep, predict_final_loss
from .sample import PassUntilFit, SampleScores, fit_pass_until, fit_pass_until_from_loglik, sample_scores

__all__ = [
    "BatchSweep",
    "BatchSweepFit",
    "CBSPrediction",
    "CBSScalingFit",
    "ChinchillaFit",
    "CriticalBatchFit",
    "Curve",
    "DataConstrainedFit",
    "DivergedRun",
    "DownstreamFit",
    "GradientNoiseScale",
    "IsoFLOPFit",
    "IsoFLOPParabola",
    "LossPrediction",
    "MultiPowerFit",
    "MultiPowerPrior",
    "NotEnoughDataError",
    "OvertrainingFit",
    "PassUntilFit",
    "SampleScores",
    "StepsToTargetFit",
    "SweepFit",
    "find_diverged",
    "fit_batch_sweep",
    "fit_cbs_scaling",
    "fit_chinchilla",
    "fit_critical_batch",
    "fit_data_constrained",
    "fit_downstream",
    "fit_isoflop",
    "fit_multipower",
    "fit_overtraining",
    "fit_pass_until",
    "fit_pass_until_from_loglik",
    "fit_sweep",
    "fit_steps_to_target",
    "hoffmann_grid",
    "predict_final_loss",
    "sample_scores",
    "schedule_from_samples",
]
