"""The skip-switchable U-Net family: U-Net, Base+CCT, Base+CCA and UCTransNet on any subset of skips.

UCTransNet (Wang et al., AAAI 2022, arXiv 2109.04335) keeps U-Net's encoder and decoder and replaces the plain
skips by CCT (a channel transformer over all skips) and CCA (channel attention in each decoder block); its
module ablation (Table 3) combines the two. Here the connector and the skip subset are data:

============  ==============================  ====================================================
connector     skips into the decoder          decoder block
============  ==============================  ====================================================
unet          encoder features as they are    ConvTranspose2d 2x up, concat ``[up, skip]``
cct           encoder features + CCT output   nearest 2x up, concat ``[skip, up]``
cca           encoder features as they are    nearest 2x up, CCA-gated skip, concat ``[skip, up]``
uctransnet    encoder features + CCT output   nearest 2x up, CCA-gated skip, concat ``[skip, up]``
============  ==============================  ====================================================

``unet`` with all skips is the reference U-Net, ``uctransnet`` the reference UCTransNet.
A switched-off skip is removed structurally (``config.skips``): the connector sees ``None`` for it and its
decoder block has zero skip channels. Zeroing built skips at inference is a different experiment,
:meth:`SkipUNet.set_test_time_mask`.

The encoder is the reference's: one conv layer at full resolution, then four max-pool + two-conv levels with
widths ``base, 2 base, 4 base, 8 base, 8 base`` (the bottleneck keeps ``8 base``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablation.config import CONNECTORS, ModelConfig
from ablation.errors import AblationError
from ablation.models.blocks import ConvBatchNormReLU, DownBlock, UpBlock
from ablation.models.ctrans import ChannelTransformer, PlainSkips
from ablation.skips import NUM_SKIPS, parse_skips, skip_flags


def encoder_channels(base_channels: int) -> tuple[int, int, int, int, int]:
    """Widths of x1..x5 (x1..x4 are the skips L1..L4, x5 the bottleneck)."""
    return (base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels, 8 * base_channels)


class SkipUNet(nn.Module):
    """U-Net-shaped segmentation network with a pluggable skip connector and a switchable skip subset.

    Attribute names follow the reference state dict (``inc``, ``down1..4``, ``mtc``, ``up4..1``, ``outc``).

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary segmentation).
        base_channels: width of the first level (reference: 64).
        skips: skip subset in any form :func:`ablation.skips.parse_skips` accepts; stored canonical ("1011").
        connector: maps the list of encoder features ``[x1, x2, x3, x4]`` (``None`` for switched-off skips) to
            the list the decoder consumes: :class:`PlainSkips`, or :class:`ChannelTransformer` built for
            ``skips``.
        upsampling: decoder upsampling, ``"transpose"`` (U-Net) or ``"nearest"`` (UCTransNet).
        channel_attention: CCA in every decoder block that has a skip.

    Shapes: ``forward(x: (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``, H and W multiples of 16.
    """

    # Colour order the weights expect; load_reference_checkpoint sets "BGR" (the reference read with OpenCV).
    channel_order: str = "RGB"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        base_channels: int,
        skips: str,
        connector: nn.Module,
        upsampling: str,
        channel_attention: bool,
    ) -> None:
        super().__init__()
        self.skips = parse_skips(skips)
        self.test_time_mask: str | None = None
        c1, c2, c3, c4, c5 = encoder_channels(base_channels)
        self.inc = ConvBatchNormReLU(in_channels, c1)
        self.down1 = DownBlock(c1, c2)
        self.down2 = DownBlock(c2, c3)
        self.down3 = DownBlock(c3, c4)
        self.down4 = DownBlock(c4, c5)
        self.mtc = connector  # reference key prefix of CCT ("multi-scale channel transformer")
        on = skip_flags(self.skips)
        decoder = {"upsampling": upsampling, "channel_attention": channel_attention}
        self.up4 = UpBlock(in_channels=c5, skip_channels=c4 * on[3], out_channels=c3, **decoder)
        self.up3 = UpBlock(in_channels=c3, skip_channels=c3 * on[2], out_channels=c2, **decoder)
        self.up2 = UpBlock(in_channels=c2, skip_channels=c2 * on[1], out_channels=c1, **decoder)
        self.up1 = UpBlock(in_channels=c1, skip_channels=c1 * on[0], out_channels=c1, **decoder)
        self.outc = nn.Conv2d(c1, num_classes, kernel_size=1)

    def set_test_time_mask(self, spec: str | None) -> None:
        """Zero some built skips at inference, without retraining (runtime masking).

        Args:
            spec: the skips to KEEP, in any form ``parse_skips`` accepts (``"1011"`` keeps L1, L3, L4 and
                feeds zeros for L2); ``None`` restores all built skips. Skips removed at build time stay
                removed.
                With CCT the mask applies after the transformer, to what the decoder receives, so a masked
                level's encoder feature still informs the other levels through attention.

        Raises:
            AblationError: for an invalid spec.
        """
        self.test_time_mask = None if spec is None else parse_skips(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, in_channels, H, W)``. Returns logits ``(B, num_classes, H, W)``."""
        x1 = self.inc(x)  # (B, c, H, W)
        x2 = self.down1(x1)  # (B, 2c, H/2, W/2)
        x3 = self.down2(x2)  # (B, 4c, H/4, W/4)
        x4 = self.down3(x3)  # (B, 8c, H/8, W/8)
        x5 = self.down4(x4)  # (B, 8c, H/16, W/16)
        features = [x if on == "1" else None for x, on in zip((x1, x2, x3, x4), self.skips)]
        kept = [on == "1" for on in self.test_time_mask or "1111"]
        s1, s2, s3, s4 = keep_skips(self.mtc(features), kept)
        d4 = self.up4(x5, s4)  # (B, 4c, H/8, W/8)
        d3 = self.up3(d4, s3)  # (B, 2c, H/4, W/4)
        d2 = self.up2(d3, s2)  # (B, c, H/2, W/2)
        d1 = self.up1(d2, s1)  # (B, c, H, W)
        return self.outc(d1)


def keep_skips(
    skips: Sequence[torch.Tensor | None], keep: Sequence[bool | torch.Tensor]
) -> list[torch.Tensor | None]:
    """Zero what a network does not keep of the skips its connector returns; a removed skip (None) stays None.

    Args:
        skips: per level L1..L4, ``(B, C_l, H_l, W_l)`` or None.
        keep: per level, True (the skip as it is), False (zeros: test-time masking,
            :meth:`SkipUNet.set_test_time_mask`) or a ``(C_l,)`` tensor of 0/1 that scales the skip's channels (a
            fused pack, :class:`ablation.models.fused.FusedUNet`, whose variants keep different skips).
    """
    return [
        None if skip is None
        else skip if kept is True
        else torch.zeros_like(skip) if kept is False
        else skip * kept.to(skip.dtype)[None, :, None, None]
        for skip, kept in zip(skips, keep)
    ]  # fmt: skip


def build_model(config: ModelConfig) -> SkipUNet:
    """Build the network a :class:`~ablation.config.ModelConfig` describes (see the table in this module).

    With all skips and base 64 the ``unet`` connector is the reference U-Net (14,751,873 parameters) and
    ``uctransnet`` at 224 px the reference UCTransNet (66,430,657), with the reference state-dict layout.

    Raises:
        AblationError: for an unknown connector, a non-positive size, or CCT patch sizes that do not tile
            ``config.img_size``.
    """
    if len(config.patch_sizes) != NUM_SKIPS:
        raise AblationError(
            f"model.patch_sizes needs {NUM_SKIPS} values (L1..L4), got {list(config.patch_sizes)}"
        )
    for key in ("in_channels", "num_classes", "num_heads", "num_layers", "expand_ratio"):
        if getattr(config, key) < 1:
            raise AblationError(f"model.{key} must be a positive integer, got {getattr(config, key)}")
    layout = CONNECTORS[config.connector]  # ModelConfig has checked the name
    widths = encoder_channels(config.base_channels)
    active = {level: widths[level - 1] for level, on in enumerate(skip_flags(config.skips), start=1) if on}
    connector: nn.Module = PlainSkips()
    if layout.transformer and active:  # with no skips CCT has nothing to fuse
        connector = ChannelTransformer(
            channels=active,
            img_size=config.img_size,
            patch_sizes=dict(enumerate(config.patch_sizes, start=1)),
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            expand_ratio=config.expand_ratio,
            embedding_dropout=config.embedding_dropout,
            attention_dropout=config.attention_dropout,
            mlp_dropout=config.mlp_dropout,
        )
    return SkipUNet(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        base_channels=config.base_channels,
        skips=config.skips,
        connector=connector,
        upsampling=layout.upsampling,
        channel_attention=layout.channel_attention,
    )
