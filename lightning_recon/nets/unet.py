"""U-Nets: FBPConvNet-style post-processing and the Deep Image Prior encoder-decoder."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LEAKY_SLOPE, group_norm

__all__ = ["UNet"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return group_norm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


def _activation() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def _conv_block(c_in: int, c_out: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Two 3 × 3 convolutions, each followed by normalisation and LeakyReLU; the first may stride."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        _norm(norm, c_out),
        _activation(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        _norm(norm, c_out),
        _activation(),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections: ``(B, C_in, H, W) -> (B, C_out, H, W)``, any ``H, W``.

    Inputs whose size is not a multiple of ``2 ** (len(channels) - 1)`` are padded (replicate) inside
    ``forward`` and the output is cropped back. The decoder upsamples bilinearly, concatenates the
    skip features and applies two 3 × 3 convolutions.

    Args:
        in_channels, out_channels: ``C_in`` and ``C_out``.
        channels: feature channels per scale; ``len(channels)`` scales, each below the first at half
            the resolution of the one above (e.g. ``(32, 32, 64, 64, 128)`` for FBPConvNet,
            ``(128,) * 5`` for the Deep Image Prior).
        skip_channels: channels of the skip connection at each scale (0 = no skip; a 1 × 1 conv maps
            the encoder features to this width). Default: the encoder features themselves, unchanged.
            The Deep Image Prior uses ``(4,) * 5``. The entry of the coarsest scale is unused.
        norm: ``"batch"``, ``"group"`` (GroupNorm, groups by :func:`~.layers.norm_groups`) or ``"none"``.
        downsample: ``"conv"`` (stride-2 3 × 3 convolution, as in the Deep Image Prior) or
            ``"maxpool"`` (2 × 2 max pooling, as in FBPConvNet).
        residual: return ``x + net(x)`` (needs ``in_channels == out_channels``).
        sigmoid: squash the output to (0, 1), applied after the residual sum.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 32, 64, 64, 128),
        skip_channels: Optional[Sequence[int]] = None,
        norm: str = "batch",
        downsample: str = "conv",
        residual: bool = False,
        sigmoid: bool = False,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one scale")
        if downsample not in ("conv", "maxpool"):
            raise ValueError(f"downsample must be 'conv' or 'maxpool', got {downsample!r}")
        if residual and in_channels != out_channels:
            raise ValueError(f"residual=True needs in_channels == out_channels, got {in_channels}, {out_channels}")
        uses_identity_skips = skip_channels is None
        skip_channels = channels if skip_channels is None else tuple(int(s) for s in skip_channels)
        if len(skip_channels) != len(channels):
            raise ValueError(f"skip_channels needs one entry per scale ({len(channels)}), got {len(skip_channels)}")
        self.residual, self.sigmoid = residual, sigmoid

        self.encoder = nn.ModuleList()
        previous = in_channels
        for scale, width in enumerate(channels):
            if scale == 0:
                self.encoder.append(_conv_block(previous, width, norm))
            elif downsample == "conv":
                self.encoder.append(_conv_block(previous, width, norm, stride=2))
            else:
                self.encoder.append(nn.Sequential(nn.MaxPool2d(2), _conv_block(previous, width, norm)))
            previous = width

        # skips[i] maps the encoder features of scale i to skip_channels[i]; None: no skip (width 0)
        # or, with the default skip_channels, the encoder features passed on unchanged.
        self.skips = nn.ModuleList()
        for width, skip_width in zip(channels[:-1], skip_channels[:-1]):
            if skip_width and not uses_identity_skips:
                self.skips.append(nn.Sequential(nn.Conv2d(width, skip_width, 1), _norm(norm, skip_width), _activation()))
            else:
                self.skips.append(None)

        self.decoder = nn.ModuleList()
        for scale in reversed(range(len(channels) - 1)):
            self.decoder.append(_conv_block(previous + skip_channels[scale], channels[scale], norm))
            previous = channels[scale]
        self.head = nn.Conv2d(previous, out_channels, 1)
        self.skip_channels = skip_channels

    @property
    def size_multiple(self) -> int:
        """Input sizes that are multiples of this need no padding."""
        return 2 ** (len(self.encoder) - 1)

    def _skip(self, scale: int, features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.skips[scale] is not None:
            return self.skips[scale](features)
        return features if self.skip_channels[scale] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, H, W) -> (B, C_out, H, W)``."""
        if x.dim() != 4:
            raise ValueError(f"UNet expects (B, C, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.size_multiple, (-width) % self.size_multiple
        features = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

        skips: List[Optional[torch.Tensor]] = []
        sizes = []
        for scale, block in enumerate(self.encoder):
            features = block(features)
            if scale < len(self.encoder) - 1:
                skips.append(self._skip(scale, features))
                sizes.append(features.shape[-2:])

        for block, skip, size in zip(self.decoder, reversed(skips), reversed(sizes)):
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            if skip is not None:
                features = torch.cat([features, skip], dim=1)
            features = block(features)

        out = self.head(features)[..., :height, :width]
        if self.residual:
            out = out + x
        return torch.sigmoid(out) if self.sigmoid else out
