"""Single-device GPT and its size family."""

from scaling_train.models.gpt import GPT, ModelConfig
from scaling_train.models.sizes import LADDER, Shape, flops_per_token, parse_size, shape_for

__all__ = ["GPT", "ModelConfig", "LADDER", "Shape", "flops_per_token", "parse_size", "shape_for"]
