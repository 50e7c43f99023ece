"""A fused pack: K variants of the skip-switchable U-Net family trained as one network.

The K variants' activations sit side by side in the channel axis, ``(B, K*C, H, W)`` with variant k's channels
at ``k*C .. (k+1)*C`` (channels_last on CUDA, so a variant's channels are contiguous per pixel), and every layer
is K independent layers (:mod:`ablation.models.fused_layers`). Input ``(B, K*3, H, W)`` holds variant k's own
images in channels ``3k .. 3k+2``; the output ``(B, K, H, W)`` its logits in channel k.

Every parameter and buffer is named as in the single model (:func:`ablation.models.build_model`) and has the
variants along dim 0: variant k's tensor is ``tensor[k]``, restricted to its own skip subset by
:meth:`FusedUNet.restrict`. That one mapping exports a variant into its own network, loads one, and slices out
variants that stopped (parameters, buffers and, in the trainer, Adam's moments).

Skip subsets in one pack. A pack is built with the union of its variants' skips; a variant that lacks a skip
multiplies it by a fixed 0 before the decoder (buffers ``skip_keep1`` .. ``skip_keep4``, ``(K, C_l)``: variant
k's 0/1 scale of each channel of level l). For ``unet`` and ``cca`` that is
exactly the structurally removed model: the first decoder convolution's weights that read a zeroed skip start at
zero and receive exactly zero gradient, so Adam keeps them at zero; a CCA gate on a zeroed skip outputs zeros and
receives zero gradient. The other weights are the variant's own (built with the fan-in of its active channels).
With CCT (``cct``, ``uctransnet``) zeroing is not removal (its key/value LayerNorm and attention span all active
levels), so those packs hold one skip subset (different seeds or folds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ablation.config import CONNECTORS, ModelConfig
from ablation.errors import AblationError
from ablation.models.ctrans import PlainSkips
from ablation.models.fused_ctrans import FusedChannelTransformer
from ablation.models.fused_layers import (
    PackedBatchNorm2d,
    PackedConv2d,
    PackedConvTranspose2d,
    PackedLinear,
    cat_variants,
    conv_weight_to_channels_last,
)
from ablation.models.unet import build_model, encoder_channels, keep_skips
from ablation.skips import skip_flags

# Connectors whose skips a fused pack may zero instead of removing (Connector.maskable: no CCT on the skips).
MASKABLE = tuple(name for name, connector in CONNECTORS.items() if connector.maskable)


class FusedConvBatchNormReLU(nn.Module):
    """K ``ConvBatchNormReLU``: 3x3 convolution, BatchNorm, ReLU; ``(B, K*C_in, H, W) -> (B, K*C_out, H, W)``."""

    def __init__(self, variants: int, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        self.conv = PackedConv2d(variants, in_channels, out_channels, 3, padding=1, mode=mode)
        self.norm = PackedBatchNorm2d(variants, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.norm(self.conv(x)))


def _conv_stack(variants: int, in_channels: int, out_channels: int, mode: str) -> nn.Sequential:
    return nn.Sequential(
        FusedConvBatchNormReLU(variants, in_channels, out_channels, mode),
        FusedConvBatchNormReLU(variants, out_channels, out_channels, mode),
    )


class FusedDownBlock(nn.Module):
    """K ``DownBlock``: 2x2 max pool, two conv layers."""

    def __init__(self, variants: int, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.nConvs = _conv_stack(variants, in_channels, out_channels, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nConvs(self.pool(x))


class FusedChannelGate(nn.Module):
    """K CCA gates: pooled skip and decoder features -> per-variant linear layers -> sigmoid scale of the skip."""

    def __init__(self, variants: int, *, decoder_channels: int, skip_channels: int) -> None:
        super().__init__()
        # (B, K*C) -> (B, K, C) -> linear; the index 1 keeps the single model's keys mlp_x.1.*, mlp_g.1.*
        self.mlp_x = nn.Sequential(
            nn.Unflatten(1, (-1, skip_channels)), PackedLinear(variants, skip_channels, skip_channels)
        )
        self.mlp_g = nn.Sequential(
            nn.Unflatten(1, (-1, decoder_channels)), PackedLinear(variants, decoder_channels, skip_channels)
        )

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Args: decoder ``(B, K*C_dec, H, W)``, skip ``(B, K*C_skip, H, W)``. Returns the gated skip."""
        skip_logits = self.mlp_x(skip.mean(dim=(2, 3)))  # (B, K*C_skip) -> (B, K, C_skip)
        decoder_logits = self.mlp_g(decoder.mean(dim=(2, 3)))  # (B, K*C_dec) -> (B, K, C_skip)
        scale = torch.sigmoid((skip_logits + decoder_logits) / 2.0).flatten(1).to(skip.dtype)  # (B, K*C_skip)
        return torch.relu(skip * scale[:, :, None, None])


class FusedUpBlock(nn.Module):
    """K ``UpBlock``: upsample 2x, (gate and) concatenate the skip within each variant, two conv layers."""

    def __init__(self, variants: int, *, in_channels: int, skip_channels: int, out_channels: int,
                 upsampling: str, channel_attention: bool, mode: str) -> None:  # fmt: skip
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = PackedConvTranspose2d(variants, in_channels, in_channels)
        else:
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.in_channels = in_channels
        self.skip_first = upsampling == "nearest"
        self.has_skip = skip_channels > 0
        gated = channel_attention and self.has_skip
        self.coatt = (
            FusedChannelGate(variants, decoder_channels=in_channels, skip_channels=skip_channels)
            if gated
            else None
        )
        self.nConvs = _conv_stack(variants, in_channels + skip_channels, out_channels, mode)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Args: x ``(B, K*C_in, H, W)``, skip ``(B, K*C_skip, 2H, 2W)`` or None. Returns (B, K*C_out, 2H, 2W)."""
        upsampled = self.up(x)
        if not self.has_skip:
            return self.nConvs(upsampled)
        if self.coatt is not None:
            skip = self.coatt(upsampled, skip)
        parts = [skip, upsampled] if self.skip_first else [upsampled, skip]
        return self.nConvs(cat_variants(parts, x.shape[1] // self.in_channels))


class FusedUNet(nn.Module):
    """K variants of one connector (skip subsets may differ for ``unet``/``cca``) as one network.

    Args:
        configs: the variants' model configs; all fields but ``skips`` must agree.
        conv: how 3x3 convolutions run, ``"grouped"`` or ``"per_variant"`` (see ``PackedConv2d``).

    Shapes: ``forward(x: (B, K*in_channels, H, W)) -> logits (B, K*num_classes, H, W)``.
    All parameters start at zero: :meth:`load_variant` copies each variant's own initial weights in.

    Raises:
        AblationError: configs that differ in more than the skip subset, or mixed subsets with CCT.
    """

    def __init__(self, configs: Sequence[ModelConfig], *, conv: str = "grouped") -> None:
        super().__init__()
        self.variant_skips = [config.skips for config in configs]
        flags = torch.tensor([skip_flags(skips) for skips in self.variant_skips])  # (K, 4) bool
        union = "".join("1" if on else "0" for on in flags.any(0).tolist())
        template = dataclasses.replace(configs[0], skips=union)
        if any(dataclasses.replace(config, skips=union) != template for config in configs):
            raise AblationError("a fused pack needs variants that differ only in the skip subset")
        masked = bool((flags.any(0) & ~flags.all(0)).any())  # some variant lacks a skip of the union
        if masked and template.connector not in MASKABLE:
            raise AblationError(
                f"connector {template.connector!r} packs only variants with the same skip subset (got "
                f"{sorted(set(self.variant_skips))}); masking is exact for {', '.join(MASKABLE)}"
            )
        variants = len(configs)
        layout = CONNECTORS[template.connector]
        c1, c2, c3, c4, c5 = widths = encoder_channels(template.base_channels)
        self.skip_channels = widths[:4]
        self.inc = FusedConvBatchNormReLU(variants, template.in_channels, c1, conv)
        self.down1 = FusedDownBlock(variants, c1, c2, conv)
        self.down2 = FusedDownBlock(variants, c2, c3, conv)
        self.down3 = FusedDownBlock(variants, c3, c4, conv)
        self.down4 = FusedDownBlock(variants, c4, c5, conv)
        on = skip_flags(union)
        active = {level: widths[level - 1] for level in range(1, 5) if on[level - 1]}
        self.mtc: nn.Module = PlainSkips()
        if layout.transformer and active:
            self.mtc = FusedChannelTransformer(
                variants, channels=active, img_size=template.img_size,
                patch_sizes=dict(enumerate(template.patch_sizes, start=1)), num_heads=template.num_heads,
                num_layers=template.num_layers, expand_ratio=template.expand_ratio,
                embedding_dropout=template.embedding_dropout, attention_dropout=template.attention_dropout,
                mlp_dropout=template.mlp_dropout,
            )  # fmt: skip
        decoder = {
            "upsampling": layout.upsampling,
            "channel_attention": layout.channel_attention,
            "mode": conv,
        }
        self.up4 = FusedUpBlock(
            variants, in_channels=c5, skip_channels=c4 * on[3], out_channels=c3, **decoder
        )
        self.up3 = FusedUpBlock(
            variants, in_channels=c3, skip_channels=c3 * on[2], out_channels=c2, **decoder
        )
        self.up2 = FusedUpBlock(
            variants, in_channels=c2, skip_channels=c2 * on[1], out_channels=c1, **decoder
        )
        self.up1 = FusedUpBlock(
            variants, in_channels=c1, skip_channels=c1 * on[0], out_channels=c1, **decoder
        )
        self.outc = PackedConv2d(variants, c1, template.num_classes, 1)
        for level, width in enumerate(self.skip_channels, start=1):  # (K, 4) -> per level (K, C_l)
            keep = flags[:, level - 1, None].float().expand(-1, width).contiguous() if masked else None
            self.register_buffer(f"skip_keep{level}", keep)
        self.channels_last = False
        self._layouts = [self._layout(config) for config in configs]

    @property
    def variants(self) -> int:
        """K, the number of variants in the pack."""
        return len(self.variant_skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, K*in_channels, H, W)``. Returns logits ``(B, K*num_classes, H, W)``."""
        x1 = self.inc(x)  # (B, K*c, H, W)
        x2 = self.down1(x1)  # (B, K*2c, H/2, W/2)
        x3 = self.down2(x2)  # (B, K*4c, H/4, W/4)
        x4 = self.down3(x3)  # (B, K*8c, H/8, W/8)
        x5 = self.down4(x4)  # (B, K*8c, H/16, W/16)
        blocks = (self.up1, self.up2, self.up3, self.up4)
        features = [x if block.has_skip else None for x, block in zip((x1, x2, x3, x4), blocks)]
        s1, s2, s3, s4 = self._keep(self.mtc(features))
        d4 = self.up4(x5, s4)  # (B, K*4c, H/8, W/8)
        d3 = self.up3(d4, s3)  # (B, K*2c, H/4, W/4)
        d2 = self.up2(d3, s2)  # (B, K*c, H/2, W/2)
        d1 = self.up1(d2, s1)  # (B, K*c, H, W)
        return self.outc(d1)

    def _keep(self, skips: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Zero each variant's switched-off skips: ``skip_keep<l>[k]`` scales variant k's channels of level l."""
        if self.skip_keep1 is None:
            return skips
        # (K, C_l) -> (K*C_l,), a view: a 0/1 scale over the pack's channels, variant k's C_l channels in turn
        keep = [getattr(self, f"skip_keep{level}").flatten() for level in range(1, 5)]
        return keep_skips(skips, keep)

    # one mapping between a variant's own network and its slice of the pack --------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.named_parameters()), **dict(self.named_buffers())}

    def _layout(self, config: ModelConfig) -> dict[str, slice | None]:
        """For each tensor of the variant's own network: None (same shape) or the slice of dim 1 it occupies.

        Only the first convolution of a decoder block whose skip the variant lacks reads fewer input channels
        (the U-Net decoder concatenates ``[upsampled, skip]``, the UCTransNet one ``[skip, upsampled]``); pack
        tensors the variant lacks (its CCA gates of missing skips, the ``skip_keep`` buffers) are left out.
        """
        with torch.device("meta"):
            model = build_model(config)
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        packed = self._tensors()
        layout: dict[str, slice | None] = {}
        for name, tensor in own.items():
            shape = packed[name].shape[1:] if name in packed else None
            if shape == tensor.shape:
                layout[name] = None
            elif shape is not None and name.startswith("up") and name.endswith("nConvs.0.conv.weight"):
                block = self.get_submodule(name.split(".")[0])
                decoder_channels = tensor.shape[1]
                skip = shape[1] - decoder_channels
                layout[name] = slice(skip, None) if block.skip_first else slice(0, decoder_channels)
            else:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} has no place in the pack ({shape})")
        return layout

    def restrict(self, k: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Variant ``k``'s part of its slice ``tensor`` (a packed tensor's ``[k]``), in its own shape (a view)."""
        where = self._layouts[k][name]
        return tensor if where is None else tensor[:, where]

    @torch.no_grad()
    def load_variant(self, k: int, model: nn.Module) -> None:
        """Copy a variant's own network (parameters and buffers) into slice ``k``; the rest stays as is."""
        packed = self._tensors()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            self.restrict(k, name, packed[name][k]).copy_(tensor)

    @torch.no_grad()
    def export_variant(self, k: int, model: nn.Module) -> nn.Module:
        """Copy slice ``k`` into the variant's own network (returned)."""
        packed = self._tensors()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_(self.restrict(k, name, packed[name][k]))
        return model

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the variants ``keep`` (in that order): every parameter and buffer is sliced along dim 0."""
        index = torch.tensor(list(keep), device=self.inc.conv.weight.device)
        for module in self.modules():
            for parameter in module._parameters.values():
                if parameter is not None:
                    parameter.grad = None
                    parameter.data = parameter.data.index_select(0, index)
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.index_select(0, index)
        self.variant_skips = [self.variant_skips[k] for k in keep]
        self._layouts = [self._layouts[k] for k in keep]
        if self.channels_last:
            self.to_channels_last()

    @torch.no_grad()
    def to_channels_last(self) -> FusedUNet:
        """Store every spatial convolution weight so that each variant's weight is channels_last (NHWC)."""
        self.channels_last = True
        for module in self.modules():
            if isinstance(module, PackedConv2d) and module.weight.shape[-1] > 1:
                module.weight.data = conv_weight_to_channels_last(module.weight.data)
        return self
