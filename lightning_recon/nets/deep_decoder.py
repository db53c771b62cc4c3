"""Deep decoder (Heckel & Hand 2019): an under-parametrised image generator without spatial convolutions.

``x = W_L · … · Norm(ReLU(Up(W_1 z)))``: each layer is a 1 × 1 convolution (a per-pixel linear map of
the channels), bilinear upsampling by 2, ReLU and channel normalisation (per channel over the image,
with a learned scale and shift); a last 1 × 1 convolution gives the image. Only the upsampling mixes
neighbouring pixels, and with few channels the network has far fewer weights than pixels: it can
represent smooth, piecewise-regular images but fits noise slowly, which is why, unlike the U-Net
of the Deep Image Prior, it needs no early stopping in the same way.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm

__all__ = ["DeepDecoder"]


class DeepDecoder(nn.Module):
    """``z (B, channels[0], h, w) -> image (B, out_channels, *image_shape)``.

    Args:
        image_shape: the output ``(H, W)``.
        channels: channels of each layer (``len(channels)`` layers, upsampling after all but the last).
        out_channels: image channels.

    The input size ``(h, w) = input_shape`` is ``image_shape`` halved ``len(channels) − 1`` times
    (rounded up); each upsampling goes to the next size on the way to ``image_shape`` exactly.
    """

    def __init__(self, image_shape: Tuple[int, int], channels: Sequence[int] = (64,) * 5, out_channels: int = 1):
        super().__init__()
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive counts, got {tuple(channels)}")
        self.image_shape = tuple(int(s) for s in image_shape)
        depth = len(channels)
        self.sizes = [tuple(math.ceil(s / 2 ** (depth - 1 - i)) for s in self.image_shape) for i in range(depth)]
        self.layers = nn.ModuleList()
        for c_in, c_out in zip(channels, list(channels[1:]) + [channels[-1]]):
            self.layers.append(nn.ModuleDict({"mix": nn.Conv2d(c_in, c_out, 1, bias=False),
                                              "norm": group_norm(c_out, groups=c_out)}))  # per channel
        self.head = nn.Conv2d(channels[-1], out_channels, 1)
        self.in_channels = int(channels[0])

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(channels[0], h, w)`` of the fixed input."""
        return (self.in_channels, *self.sizes[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or tuple(z.shape[1:]) != self.input_shape:
            raise ValueError(f"z must be (B, {', '.join(map(str, self.input_shape))}), got {tuple(z.shape)}")
        x = z
        for i, layer in enumerate(self.layers):
            x = layer["mix"](x)
            if i + 1 < len(self.layers):
                x = F.interpolate(x, size=self.sizes[i + 1], mode="bilinear", align_corners=False)
            x = layer["norm"](F.relu(x))
        return self.head(x)
