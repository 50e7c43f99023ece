"""Layers of a fused pack: K independent copies of a layer side by side in the channel axis.

A fused pack (see :mod:`ablation.models.fused`) keeps the activations of K variants in one tensor
``(B, K*C, H, W)``, variant k's channels at ``k*C .. (k+1)*C``; token tensors are ``(B, N, K, C)``. Every
parameter and buffer has the variants along dim 0, ``(K, *shape of the single layer)``, so variant k's layer is
the slice ``[k]``. The idea is HFTA's horizontal fusion (Wang et al., MLSys 2021, arXiv 2102.02344) and the
grouped convolutions of Packed-Ensembles (Laurent et al., ICLR 2023); no code is taken from either.

What each layer computes is exactly the K single layers (up to floating-point summation order):

- 3x3 (and patch-embedding) convolutions: one grouped convolution with ``groups=K``, or with
  ``mode="per_variant"`` K dense convolutions, each on its own CUDA stream on a GPU;
- 1x1 convolutions and the 2x2 stride-2 transposed convolutions: one batched matmul over the pixels;
- BatchNorm over K*C channels is K BatchNorms (statistics are per channel);
- linear layers and LayerNorm act on ``(..., K, C)`` with per-variant weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ablation.config import PACK_CONVS

_STREAMS: dict[tuple[torch.device, int], torch.cuda.Stream] = {}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out NHWC (ambiguous shapes count as NCHW)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def cat_variants(parts: list[torch.Tensor], variants: int) -> torch.Tensor:
    """Concatenate along channels within each variant: ``[(B, K*C_i, H, W)] -> (B, K*sum(C_i), H, W)``.

    Variant k's output channels are its channels of ``parts[0]``, then of ``parts[1]``, ...: what
    ``torch.cat(dim=1)`` gives in each variant's own network. Keeps the memory format of ``parts[0]``.
    """
    if is_channels_last(parts[0]):
        nhwc = [part.permute(0, 2, 3, 1).unflatten(-1, (variants, -1)) for part in parts]  # (B, H, W, K, C_i)
        return torch.cat(nhwc, dim=-1).flatten(-2).permute(0, 3, 1, 2)
    return torch.cat([part.unflatten(1, (variants, -1)) for part in parts], dim=2).flatten(1, 2)


def _pixel_rows(x: torch.Tensor, variants: int) -> torch.Tensor:
    """``(B, K*C, H, W) -> (K, B*H*W, C)``: each variant's pixels as matrix rows (a view in NHWC)."""
    b, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, variants, -1).transpose(0, 1)


def _side_streams(device: torch.device, count: int) -> list[torch.cuda.Stream]:
    """``count`` CUDA streams of ``device``, created once and reused."""
    streams = []
    for index in range(count):
        key = (device, index)
        if key not in _STREAMS:
            _STREAMS[key] = torch.cuda.Stream(device=device)
        streams.append(_STREAMS[key])
    return streams


class PackedConv2d(nn.Module):
    """K ``nn.Conv2d`` side by side: ``(B, K*C_in, H, W) -> (B, K*C_out, H', W')``.

    Args:
        variants: K.
        in_channels, out_channels: of one variant.
        kernel_size, stride, padding: as ``nn.Conv2d``.
        bias: add a per-variant bias.
        mode: ``"grouped"`` (one convolution with ``groups=K``) or ``"per_variant"`` (K dense convolutions, on
            K CUDA streams on a GPU). 1x1 convolutions always run as one batched matmul.

    Parameters: ``weight (K, C_out, C_in, k, k)``, ``bias (K, C_out)``.
    """

    def __init__(
        self,
        variants: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        mode: str = "grouped",
    ) -> None:
        super().__init__()
        if mode not in PACK_CONVS:
            raise ValueError(f"unknown convolution mode {mode!r}: choose one of {', '.join(PACK_CONVS)}")
        self.stride, self.padding, self.mode = stride, padding, mode
        self.weight = nn.Parameter(torch.zeros(variants, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(variants, out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variants = self.weight.shape[0]
        if self.weight.shape[-1] == 1 and self.stride == 1:
            rows = self.matmul_rows(_pixel_rows(x, variants))  # (K, B*H*W, C_out)
            b, _, h, w = x.shape
            out = rows.transpose(0, 1).reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, K*C_out, H, W) NHWC
            return out if is_channels_last(x) else out.contiguous()
        if self.mode == "per_variant":
            return self._per_variant(x)
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(x, self.weight.flatten(0, 1), bias, self.stride, self.padding, groups=variants)

    def matmul_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A 1x1 convolution on ``(K, M, C_in)`` rows -> ``(K, M, C_out)``, one batched matmul."""
        weight = self.weight.flatten(2).transpose(1, 2)  # (K, C_in, C_out)
        if self.bias is None:
            return torch.bmm(rows, weight)
        return torch.baddbmm(self.bias[:, None, :], rows, weight)

    def _per_variant(self, x: torch.Tensor) -> torch.Tensor:
        """K dense convolutions on the variants' channel slices, concatenated back (NHWC kept)."""
        variants, in_channels = self.weight.shape[0], self.weight.shape[2]
        # split/unbind: one backward node each (a concatenation), not K slices each scattering a full-size grad.
        parts, weights = x.split(in_channels, dim=1), self.weight.unbind(0)
        biases = [None] * variants if self.bias is None else self.bias.unbind(0)

        def conv(k: int) -> torch.Tensor:
            return F.conv2d(parts[k], weights[k], biases[k], self.stride, self.padding)

        if not x.is_cuda:
            return torch.cat([conv(k) for k in range(variants)], dim=1)
        main = torch.cuda.current_stream(x.device)
        streams = _side_streams(x.device, variants)
        capturing = torch.cuda.is_current_stream_capturing()
        outputs = []
        for k, stream in enumerate(streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outputs.append(conv(k))
            if not capturing:  # x is read on the side stream: its memory must not be reused before that ends
                x.record_stream(stream)
        for stream, output in zip(streams, outputs):
            main.wait_stream(stream)
            if not capturing:
                output.record_stream(main)
        return torch.cat(outputs, dim=1)


class PackedConvTranspose2d(nn.Module):
    """K ``nn.ConvTranspose2d(kernel_size=2, stride=2)`` as one batched matmul and a pixel shuffle.

    ``(B, K*C_in, H, W) -> (B, K*C_out, 2H, 2W)``. Parameters: ``weight (K, C_in, C_out, 2, 2)``,
    ``bias (K, C_out)``. With kernel = stride = 2 every output pixel comes from exactly one input pixel.
    """

    def __init__(self, variants: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(variants, in_channels, out_channels, 2, 2))
        self.bias = nn.Parameter(torch.zeros(variants, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        variants, _, out_channels = self.weight.shape[:3]
        bias = self.bias[:, None, :, None].expand(-1, -1, -1, 4).flatten(2)  # (K, 1, C_out * 2 * 2)
        rows = torch.baddbmm(bias, _pixel_rows(x, variants), self.weight.flatten(2))  # (K, BHW, C_out*2*2)
        rows = rows.view(variants, b, h, w, out_channels, 2, 2)
        out = rows.permute(1, 2, 5, 3, 6, 0, 4).reshape(b, 2 * h, 2 * w, variants * out_channels)
        out = out.permute(0, 3, 1, 2)  # (B, 2H, 2W, K*C_out) -> (B, K*C_out, 2H, 2W), NHWC in memory
        return out if is_channels_last(x) else out.contiguous()


class PackedBatchNorm2d(nn.Module):
    """K ``nn.BatchNorm2d(C)`` (momentum 0.1, eps 1e-5) as one BatchNorm over K*C channels.

    Buffers ``running_mean``, ``running_var (K, C)`` and ``num_batches_tracked (K,)``; BatchNorm updates the
    flattened views in place, so each variant's statistics are its own.
    """

    def __init__(self, variants: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(variants, channels))
        self.bias = nn.Parameter(torch.zeros(variants, channels))
        self.register_buffer("running_mean", torch.zeros(variants, channels))
        self.register_buffer("running_var", torch.ones(variants, channels))
        self.register_buffer("num_batches_tracked", torch.zeros(variants, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.flatten(),
            self.bias.flatten(),
            self.training,
            0.1,
            1e-5,
        )


class PackedLinear(nn.Module):
    """K ``nn.Linear`` on ``(..., K, in)`` -> ``(..., K, out)``; ``weight (K, out, in)``, ``bias (K, out)``."""

    def __init__(self, variants: int, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(variants, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(variants, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("...ki,koi->...ko", x, self.weight)
        return out if self.bias is None else out + self.bias


class PackedLayerNorm(nn.Module):
    """K ``nn.LayerNorm(C)`` on ``(..., K, C)``; ``weight``, ``bias (K, C)``."""

    def __init__(self, variants: int, channels: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(variants, channels))
        self.bias = nn.Parameter(torch.zeros(variants, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


def conv_weight_to_channels_last(weight: torch.Tensor) -> torch.Tensor:
    """``(K, C_out, C_in, k, k)`` stored so that ``weight.flatten(0, 1)`` is a channels_last 4-D weight."""
    return weight.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
