"""Gaussian denoisers conditioned on the noise level σ, for plug-and-play priors.

Both networks map a noisy image ``x (B, C, H, W)`` and its noise level ``σ`` (a number, a 0-d
tensor or one per sample ``(B,)``, in image units: the standard deviation of the white Gaussian
noise added to images of the data's scale) to the denoised image ``(B, C, H, W)``. Both are fully
convolutional: trained at one image size, they take any ``H, W ≥ min_size`` (sizes that are not a
multiple of ``size_multiple`` are padded by replication inside ``forward`` and cropped back).

- :class:`DRUNet`: a small DRUNet-style residual U-Net (Zhang et al., "Plug-and-play image
  restoration with deep denoiser prior", TPAMI 2021): σ enters as a constant extra input channel;
  stride-2 convolutions down, transposed convolutions up, residual blocks at every scale, additive
  skips, no biases (bias-free networks generalise across noise levels), and by default a global
  residual (the network predicts the negative noise).
- :class:`LiftingDenoiser`: a wavelet-like invertible transform built by the lifting scheme
  (:class:`LiftingScheme`: Haar-like even/odd polyphase split, learned predict and update
  convolutional networks, several levels; ``inverse`` is exact up to float rounding whatever the
  weights), a small σ-conditioned network that cleans the detail bands of each level, then the
  inverse transform (as in WINNet / LINN: Huang & Dragotti, "WINNet: wavelet-inspired invertible
  network for image denoising", IEEE TIP 2022).
"""
from __future__ import annotations

import numbers
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DRUNet", "LiftingDenoiser", "LiftingScheme", "LiftingStep", "noise_level_map"]

Sigma = Union[float, torch.Tensor]


def noise_level_map(sigma: Sigma, x: torch.Tensor) -> torch.Tensor:
    """``σ`` as a constant image ``(B, 1, H, W)`` with ``x``'s batch, size, dtype and device; ``sigma``
    is a number, a 0-d tensor or a tensor ``(B,)`` (gradients flow through a tensor)."""
    batch = x.shape[0]
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() > 1 or (sigma.dim() == 1 and sigma.shape[0] not in (1, batch)):
            raise ValueError(f"sigma must be a number or a tensor of shape ({batch},), got shape {tuple(sigma.shape)}")
        values = sigma.to(device=x.device, dtype=x.dtype).reshape(-1).expand(batch)
    elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        values = torch.full((batch,), float(sigma), device=x.device, dtype=x.dtype)
    else:
        raise ValueError(f"sigma must be a number or a tensor of shape ({batch},), got {type(sigma).__name__}")
    return values.view(batch, 1, 1, 1).expand(batch, 1, *x.shape[-2:])


class _Denoiser(nn.Module):
    """What both denoisers share: the input check, padding to ``size_multiple`` and cropping."""

    in_channels: int
    size_multiple: int

    @property
    def min_size(self) -> int:
        """The smallest image side the network takes (its coarsest scale is one pixel)."""
        return self.size_multiple

    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` (one line) unless ``x`` is a floating ``(B, in_channels, H, W)`` batch with
        ``H, W ≥ min_size``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} takes images (B, {self.in_channels}, H, W), got {shape}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{type(self).__name__} takes images of at least {self.min_size}x{self.min_size} "
                             f"pixels, got {x.shape[-2]}x{x.shape[-1]}")
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} takes floating-point images, got dtype {x.dtype}")

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-x.shape[-2]) % self.size_multiple, (-x.shape[-1]) % self.size_multiple
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def forward(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """The denoised images ``(B, C, H, W)`` of ``x (B, C, H, W)`` at noise level ``sigma``."""
        self.check_input(x)
        height, width = x.shape[-2:]
        return self.denoise_padded(self._padded(x), sigma)[..., :height, :width]

    def denoise_padded(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        raise NotImplementedError


class _ResidualBlock(nn.Module):
    """``x + conv(ReLU(conv(x)))``, 3 × 3 convolutions without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DRUNet(_Denoiser):
    """A small DRUNet: ``(x, σ) -> x̂``, σ as an extra constant input channel.

    Head 3 × 3 conv (``C + 1 -> channels[0]``); per scale but the last, ``blocks`` residual blocks
    then a 2 × 2 stride-2 conv to the next width; ``blocks`` residual blocks at the coarsest scale;
    back up, per scale, a 2 × 2 stride-2 transposed conv, the encoder features of that scale added,
    ``blocks`` residual blocks; tail 3 × 3 conv to ``C`` channels (after adding the head's features).
    No biases, no normalisation.

    Args:
        in_channels: image channels ``C``.
        channels: feature widths per scale (DRUNet: ``(64, 128, 256, 512)``; the default is small).
        blocks: residual blocks per scale (DRUNet: 4).
        residual: return ``x + net(x, σ)`` instead of ``net(x, σ)``.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), blocks: int = 2,
                 residual: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1 or in_channels < 1 or blocks < 0:
            raise ValueError(f"DRUNet needs in_channels >= 1, at least one positive width and blocks >= 0, got "
                             f"in_channels={in_channels}, channels={channels}, blocks={blocks}")
        self.in_channels, self.residual = int(in_channels), bool(residual)
        self.size_multiple = 2 ** (len(channels) - 1)
        self.head = nn.Conv2d(in_channels + 1, channels[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(*[_ResidualBlock(width) for _ in range(blocks)],
                          nn.Conv2d(width, wider, 2, stride=2, bias=False))
            for width, wider in zip(channels[:-1], channels[1:]))
        self.body = nn.Sequential(*[_ResidualBlock(channels[-1]) for _ in range(blocks)])
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(wider, width, 2, stride=2, bias=False),
                          *[_ResidualBlock(width) for _ in range(blocks)])
            for width, wider in reversed(list(zip(channels[:-1], channels[1:]))))
        self.tail = nn.Conv2d(channels[0], in_channels, 3, padding=1, bias=False)

    def denoise_padded(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        features = [self.head(torch.cat([x, noise_level_map(sigma, x)], dim=1))]
        for block in self.down:
            features.append(block(features[-1]))
        h = self.body(features[-1])
        for block, skip in zip(self.up, reversed(features[1:])):
            h = block(h + skip)
        out = self.tail(h + features[0])
        return x + out if self.residual else out


def _small_net(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """conv 3 × 3 → ReLU → conv 3 × 3 → ReLU → conv 3 × 3, the last initialised to zero."""
    net = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(inplace=True),
                        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
                        nn.Conv2d(hidden, c_out, 3, padding=1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def _split(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Polyphase split of ``(B, C, H, W)`` (even ``H, W``): even ``x[::2, ::2]`` ``(B, C, H/2, W/2)``
    and odd ``[x[::2, 1::2], x[1::2, ::2], x[1::2, 1::2]]`` ``(B, 3C, H/2, W/2)``."""
    even = x[..., ::2, ::2]
    odd = torch.cat([x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]], dim=1)
    return even, odd


def _merge(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_split`."""
    top_right, bottom_left, bottom_right = odd.chunk(3, dim=1)
    rows = torch.stack([torch.stack([even, top_right], dim=-1), torch.stack([bottom_left, bottom_right], dim=-1)],
                       dim=-3)  # (B, C, H, 2, W, 2)
    return rows.flatten(-2).flatten(-3, -2)


class LiftingStep(nn.Module):
    """One lifting level: split, predict, update.

    ``d = o − [e, e, e] − P(e)`` (the detail: what the even samples do not predict of the three odd
    ones), ``s = e + (d₁ + d₂ + d₃)/4 + U(d)`` (the approximation). With ``P = U = 0`` (their last
    layers start at zero) this is the 2D Haar transform: ``s`` is the mean of each 2 × 2 block and
    ``d`` the differences to its top-left pixel. Invertible for any ``P`` and ``U``:
    ``e = s − (d₁ + d₂ + d₃)/4 − U(d)``, ``o = d + [e, e, e] + P(e)``.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.channels = int(channels)
        self.predict = _small_net(channels, 3 * channels, hidden)
        self.update = _small_net(3 * channels, channels, hidden)

    def _haar_update(self, detail: torch.Tensor) -> torch.Tensor:
        return detail.unflatten(1, (3, self.channels)).sum(1) / 4

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)`` → ``(s (B, C, H/2, W/2), d (B, 3C, H/2, W/2))``."""
        even, odd = _split(x)
        detail = odd - even.repeat(1, 3, 1, 1) - self.predict(even)
        return even + self._haar_update(detail) + self.update(detail), detail

    def inverse(self, approximation: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        even = approximation - self._haar_update(detail) - self.update(detail)
        return _merge(even, detail + even.repeat(1, 3, 1, 1) + self.predict(even))


Coefficients = Tuple[torch.Tensor, List[torch.Tensor]]


class LiftingScheme(nn.Module):
    """A learned multi-level lifting transform, invertible by construction.

    ``forward(x)`` applies ``levels`` :class:`LiftingStep` s, each to the previous approximation, and
    returns ``(approximation (B, C, H/2^L, W/2^L), [d₁ (B, 3C, H/2, W/2), …, d_L])`` (details finest
    first); ``inverse`` undoes it exactly up to float rounding. ``H`` and ``W`` must be multiples
    of ``2 ** levels``.
    """

    def __init__(self, channels: int = 1, levels: int = 3, hidden: int = 16):
        super().__init__()
        if levels < 1 or channels < 1 or hidden < 1:
            raise ValueError(f"LiftingScheme needs channels, levels and hidden >= 1, got {channels}, {levels}, "
                             f"{hidden}")
        self.channels, self.levels = int(channels), int(levels)
        self.steps = nn.ModuleList(LiftingStep(channels, hidden) for _ in range(levels))

    def decompose(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Approximations ``[s₁, …, s_L]`` and details ``[d₁, …, d_L]`` of every level (finest first)."""
        multiple = 2 ** self.levels
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"LiftingScheme with {self.levels} levels takes (B, {self.channels}, H, W) with H and W "
                             f"multiples of {multiple}, got {tuple(x.shape)}")
        approximations, details = [], []
        for step in self.steps:
            x, detail = step(x)
            approximations.append(x)
            details.append(detail)
        return approximations, details

    def forward(self, x: torch.Tensor) -> Coefficients:
        approximations, details = self.decompose(x)
        return approximations[-1], details

    def inverse(self, coefficients: Coefficients) -> torch.Tensor:
        """The image ``(B, C, H, W)`` of ``(approximation, details)`` as :meth:`forward` returns them."""
        approximation, details = coefficients
        if len(details) != self.levels:
            raise ValueError(f"LiftingScheme.inverse needs {self.levels} detail bands, got {len(details)}")
        x = approximation
        for step, detail in zip(reversed(self.steps), reversed(details)):
            x = step.inverse(x, detail)
        return x


class LiftingDenoiser(_Denoiser):
    """Denoising in a learned invertible lifting transform: ``x̂ = T⁻¹(s_L, [d̂₁, …, d̂_L])``.

    ``T`` is a :class:`LiftingScheme` (``transform``; σ-independent, so the same invertible transform
    serves every noise level). At each level ``l`` a small network ``N_l`` (3 conv layers,
    ``denoiser_hidden`` channels) cleans the detail band from the band, the approximation of the same
    level and ``σ``: ``d̂_l = d_l − N_l(d_l, s_l, σ)``. The coarsest approximation ``s_L`` (noise
    std ``σ / 2^L`` for the Haar start) is kept. With every network at its zero start the denoiser
    is the identity.

    Args:
        in_channels: image channels ``C``.
        levels: lifting levels ``L``; images are padded to multiples of ``2^L``.
        hidden: width of the predict and update networks.
        denoiser_hidden: width of the detail-band networks.
    """

    def __init__(self, in_channels: int = 1, levels: int = 3, hidden: int = 16, denoiser_hidden: int = 32):
        super().__init__()
        self.in_channels = int(in_channels)
        self.transform = LiftingScheme(in_channels, levels, hidden)
        self.size_multiple = 2 ** levels
        if denoiser_hidden < 1:
            raise ValueError(f"denoiser_hidden must be >= 1, got {denoiser_hidden}")
        self.detail_nets = nn.ModuleList(_small_net(4 * in_channels + 1, 3 * in_channels, denoiser_hidden)
                                         for _ in range(levels))

    @property
    def levels(self) -> int:
        return self.transform.levels

    def denoise_padded(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        approximations, details = self.transform.decompose(x)
        cleaned = [detail - net(torch.cat([detail, approximation, noise_level_map(sigma, detail)], dim=1))
                   for net, detail, approximation in zip(self.detail_nets, details, approximations)]
        return self.transform.inverse((approximations[-1], cleaned))
