"""Convolutional blocks of the reference U-Net and UCTransNet (Wang et al., AAAI 2022, arXiv 2109.04335).

Attribute names that end up in the state dict (``conv``, ``norm``, ``nConvs``, ``up``, ``coatt``, ``mlp_x``,
``mlp_g``) are the reference implementation's, so its checkpoints load with ``strict=True``; everything else
uses descriptive names.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBatchNormReLU(nn.Module):
    """3x3 convolution (padding 1) -> BatchNorm -> ReLU; ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        # In place is safe here: the BatchNorm output is a fresh tensor nobody else holds.
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


def conv_stack(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two ConvBatchNormReLU, the body of every encoder and decoder level but the first."""
    return nn.Sequential(
        ConvBatchNormReLU(in_channels, out_channels), ConvBatchNormReLU(out_channels, out_channels)
    )


class DownBlock(nn.Module):
    """2x2 max pool then two conv layers; ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.nConvs = conv_stack(in_channels, out_channels)  # reference key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nConvs(self.pool(x))


class ChannelCrossAttentionGate(nn.Module):
    """CCA: re-weights the skip's channels from pooled skip and decoder features (the paper's Sec. 3.3).

    Global average pools of the skip and of the upsampled decoder feature each go through a linear layer; the
    two are averaged, squashed by a sigmoid and rescale the skip's channels, followed by a ReLU.
    """

    def __init__(self, *, decoder_channels: int, skip_channels: int) -> None:
        super().__init__()
        # Sequential(Flatten, Linear) keeps the reference keys ``mlp_x.1.*`` and ``mlp_g.1.*``.
        self.mlp_x = nn.Sequential(nn.Flatten(), nn.Linear(skip_channels, skip_channels))
        self.mlp_g = nn.Sequential(nn.Flatten(), nn.Linear(decoder_channels, skip_channels))

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Args: decoder ``(B, C_dec, H, W)``, skip ``(B, C_skip, H, W)``. Returns the gated skip."""
        skip_logits = self.mlp_x(skip.mean(dim=(2, 3), keepdim=True))  # (B, C_skip, 1, 1) -> (B, C_skip)
        decoder_logits = self.mlp_g(decoder.mean(dim=(2, 3), keepdim=True))  # (B, C_dec, 1, 1) -> (B, C_skip)
        scale = torch.sigmoid((skip_logits + decoder_logits) / 2.0).to(skip.dtype)  # bf16 under autocast
        return torch.relu(skip * scale[:, :, None, None])


class UpBlock(nn.Module):
    """One decoder level: upsample 2x, (optionally gate and) concatenate the skip, two conv layers.

    The two reference decoders differ and each is kept as it is so its checkpoints load and compute the same:
    U-Net upsamples with ``ConvTranspose2d(2, stride 2)`` and concatenates ``[upsampled, skip]``; UCTransNet
    upsamples by nearest interpolation and concatenates ``[skip, upsampled]``. A switched-off skip
    (``skip_channels == 0``) builds the convolutions for the decoder feature alone, so the block cannot see
    that encoder feature.

    Args:
        in_channels: channels of the deeper decoder feature.
        skip_channels: channels of the skip, 0 when the skip is switched off.
        out_channels: channels after the two convolutions.
        upsampling: ``"transpose"`` (U-Net) or ``"nearest"`` (UCTransNet).
        channel_attention: gate the skip with CCA (only with a skip).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        upsampling: str,
        channel_attention: bool,
    ) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        elif upsampling == "nearest":
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            raise ValueError(f"unknown upsampling {upsampling!r}: choose transpose or nearest")
        self.skip_first = upsampling == "nearest"
        self.has_skip = skip_channels > 0
        gated = channel_attention and self.has_skip
        self.coatt = (
            ChannelCrossAttentionGate(decoder_channels=in_channels, skip_channels=skip_channels)
            if gated
            else None
        )
        self.nConvs = conv_stack(in_channels + skip_channels, out_channels)  # reference key name

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``(B, C_in, H, W)``, skip ``(B, C_skip, 2H, 2W)`` or None. Returns (B, C_out, 2H, 2W)."""
        upsampled = self.up(x)
        if not self.has_skip:
            return self.nConvs(upsampled)
        if skip is None:
            raise ValueError("this decoder block was built with a skip connection but received none")
        if self.coatt is not None:
            skip = self.coatt(upsampled, skip)
        parts = [skip, upsampled] if self.skip_first else [upsampled, skip]
        return self.nConvs(torch.cat(parts, dim=1))
