"""Layers LUMOS ships because SciML models need them and torch does not have them.

``SpectralConv1d`` / ``SpectralConv2d`` are the Fourier layers of a Fourier Neural Operator
(Li et al., 2021): FFT, a learned complex linear map on the lowest ``modes`` frequencies, inverse
FFT. The coordinator knows them (their in/out channels are gated like a 1x1 conv's), so an FNO
built from them sparsifies and compacts exactly. Complex weights are stored as real tensors with
a trailing (real, imag) dim so they count, save, all-reduce and export like any parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _complex_weight(*shape: int, scale: float) -> nn.Parameter:
    return nn.Parameter(scale * torch.rand(*shape, 2))


class SpectralConv1d(nn.Module):
    """Fourier layer on signals ``(batch, in_channels, n)``: keeps the ``modes`` lowest modes."""

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        scale = 1 / max(1, in_channels * out_channels)
        self.weight = _complex_weight(in_channels, out_channels, modes, scale=scale)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        x_ft = torch.fft.rfft(x, norm="ortho")
        m = min(self.modes, x_ft.shape[-1])
        w = torch.view_as_complex(self.weight[:, :, :m])
        low = torch.einsum("bix,iox->box", x_ft[..., :m], w)
        out_ft = torch.nn.functional.pad(low, (0, x_ft.shape[-1] - m))
        return torch.fft.irfft(out_ft, n=n, norm="ortho")


class SpectralConv2d(nn.Module):
    """Fourier layer on fields ``(batch, in_channels, h, w)``: keeps ``modes1 x modes2`` modes
    in each of the two low-frequency corners of the half spectrum (as in the reference FNO)."""

    def __init__(self, in_channels: int, out_channels: int, modes1: int, modes2: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes1 = modes1
        self.modes2 = modes2
        scale = 1 / max(1, in_channels * out_channels)
        self.weight1 = _complex_weight(in_channels, out_channels, modes1, modes2, scale=scale)
        self.weight2 = _complex_weight(in_channels, out_channels, modes1, modes2, scale=scale)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x_ft = torch.fft.rfft2(x, norm="ortho")
        m1 = min(self.modes1, h // 2)
        m2 = min(self.modes2, x_ft.shape[-1])
        w1 = torch.view_as_complex(self.weight1[:, :, :m1, :m2])
        w2 = torch.view_as_complex(self.weight2[:, :, :m1, :m2])
        top = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m1, :m2], w1)
        bottom = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, h - m1 :, :m2], w2)
        pad_w = x_ft.shape[-1] - m2
        middle = top.new_zeros(top.shape[0], top.shape[1], h - 2 * m1, m2)
        out_ft = torch.cat([top, middle, bottom], dim=-2)
        out_ft = torch.nn.functional.pad(out_ft, (0, pad_w))
        return torch.fft.irfft2(out_ft, s=(h, w), norm="ortho")
