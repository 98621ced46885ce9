"""scaling_train: scaling-law studies of language models."""

__version__ = "0.1.0"
