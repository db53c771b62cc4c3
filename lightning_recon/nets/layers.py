"""Layers the architectures share: one group-normalisation rule and the LeakyReLU slope."""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

__all__ = ["LEAKY_SLOPE", "MAX_NORM_GROUPS", "group_norm", "norm_groups"]

LEAKY_SLOPE = 0.2
MAX_NORM_GROUPS = 8


def norm_groups(channels: int) -> int:
    """The group rule: ``gcd(channels, MAX_NORM_GROUPS)``, the largest power of two ≤ 8 dividing
    ``channels`` (1 for odd counts), so that any channel count is allowed."""
    return math.gcd(channels, MAX_NORM_GROUPS)


def group_norm(channels: int, groups: Optional[int] = None) -> nn.GroupNorm:
    """Per-sample normalisation (``GroupNorm``): the same in training and evaluation, and one
    sample's output never depends on the others of its batch (batched reconstruction, WGAN-GP's
    per-sample gradient penalty). ``groups`` defaults to :func:`norm_groups`; a network that
    trained with another count passes it explicitly (its checkpoints and numbers depend on it):
    ``1`` is layer normalisation over ``(C, H, W)``."""
    return nn.GroupNorm(norm_groups(channels) if groups is None else groups, channels)
