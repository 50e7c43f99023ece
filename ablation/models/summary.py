"""Parameter counts and forward FLOPs of every connector x skip-subset variant.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one forward pass of one image at ``img_size``,
counting matrix multiplications and convolutions (transposed included) at 2 FLOPs per multiply-add; norms,
activations, pooling and softmax are not counted. Papers that report "FLOPs" from multiply-add counters (thop,
ptflops) give about half these numbers. The model is built on the meta device, so no memory is allocated and
no arithmetic runs: all 64 variants at base 64 / 224 px take a few seconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ablation.config import CONNECTORS, ModelConfig
from ablation.models.unet import build_model
from ablation.skips import ALL_SUBSETS, skip_label


def model_summary(config: ModelConfig) -> dict[str, Any]:
    """``{"parameters": int, "gflops": float}`` of the model ``config`` describes (forward, one image)."""
    with torch.device("meta"):
        model = build_model(config)
    model.eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    image = torch.empty(1, config.in_channels, config.img_size, config.img_size, device="meta")
    # no_grad: a forward count needs no autograd graph, and recording one triples the time on meta tensors.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return {"parameters": int(parameters), "gflops": counter.get_total_flops() / 1e9}


def all_model_summaries(base: ModelConfig | None = None) -> list[dict[str, Any]]:
    """One record per connector x skip subset (4 x 16), in ``CONNECTORS`` then ``ALL_SUBSETS`` order.

    Args:
        base: settings shared by all variants (channels, image size, CCT shape); connector and skips are
            replaced.

    Returns:
        Records with keys connector, skips, skip_label, base_channels, img_size, parameters, gflops.
    """
    base = base or ModelConfig()
    records = []
    for connector in CONNECTORS:
        for skips in ALL_SUBSETS:
            config = dataclasses.replace(base, connector=connector, skips=skips)
            records.append(
                {
                    "connector": connector,
                    "skips": skips,
                    "skip_label": skip_label(skips),
                    "base_channels": config.base_channels,
                    "img_size": config.img_size,
                    **model_summary(config),
                }
            )
    return records
