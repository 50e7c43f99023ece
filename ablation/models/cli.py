"""``ablation models``: parameters and forward GFLOPs of every connector x skip-subset variant."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list all 64 model variants (4 connectors x 16 skip subsets) with parameters and GFLOPs",
        description="Parameters and forward GFLOPs (one image, torch.utils.flop_counter, 2 FLOPs per "
        "multiply-add) of every connector x skip subset.",
    )
    parser.add_argument("--base-channels", type=int, default=64, help="width of the first level (default 64)")
    parser.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from ablation.config import ModelConfig
    from ablation.models.summary import all_model_summaries

    # ModelConfig validates both flags (img_size a positive multiple of 16, base_channels >= 1).
    base = ModelConfig(base_channels=args.base_channels, img_size=args.img_size)
    records = all_model_summaries(base)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"base channels {args.base_channels}, {args.img_size}x{args.img_size} px, one image, forward pass")
    print(f"{'connector':<11} {'skips':<5} {'label':<12} {'parameters':>12} {'GFLOPs':>9}")
    for record in records:
        print(
            f"{record['connector']:<11} {record['skips']:<5} {record['skip_label']:<12} "
            f"{record['parameters']:>12,} {format_gflops(record['gflops']):>9}"
        )
    return 0


def format_gflops(value: float) -> str:
    """At least 3 significant digits and no exponent: 0.0123, 1.50, 12.3, 62165."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"
