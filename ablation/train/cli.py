"""``ablation train`` (one run) and ``ablation evaluate`` (score a checkpoint). torch is imported in handlers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ablation.config import CONNECTORS


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train one run (dataset, split, connector, skip subset, seed) and score it on the test set",
        description="Train one run with the paper's protocol; the run folder goes to OUT/<run name>. Settings "
        "come from the defaults, then --config, then the flags, then --set.",
    )
    train.add_argument(
        "--dataset", help="glas, monuseg, synthetic-nuclei, synthetic-glands, or a dataset folder"
    )
    train.add_argument("--connector", choices=list(CONNECTORS))
    train.add_argument("--skips", help="skip subset, L1..L4: 1011, L1+L3+L4, all or none")
    train.add_argument("--seed", type=int)
    train.add_argument("--fold", type=int, help="k-fold index (default: the dataset's own train/val split)")
    train.add_argument("--repeat", type=int, help="k-fold repeat index")
    train.add_argument("--epochs", type=int, help="maximum epochs (train.max_epochs; the paper: 2000)")
    train.add_argument(
        "--init-from",
        metavar="SOURCE",
        help="start from the matching weights of a done run of OUT: its connector/skips (e.g. unet/1111: the run "
        "of the same dataset, split and seed) or its run folder (train.init_from; default: random weights)",
    )
    train.add_argument("--base-channels", type=int)
    train.add_argument("--img-size", type=int)
    train.add_argument(
        "--data-root", help="folder holding GlaS/ and MoNuSeg/ (default $ABLATION_DATA or ./data)"
    )
    train.add_argument(
        "--config", type=Path, help="a .toml or .json file with RunConfig keys (model.*, train.*)"
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any key, e.g. train.lr=1e-4"
    )
    train.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="write TensorBoard logs to the run folder's tensorboard/ (train.tensorboard; needs the "
        "'tensorboard' extra)",
    )
    train.add_argument(
        "--out", type=Path, required=True, help="results folder; the run goes to OUT/<run name>"
    )
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint (ours or a reference one) on a dataset split",
        description="Score checkpoint_best.pt of a run (its config is stored inside) or a checkpoint saved by the "
        "reference UCTransNet code on one split: Dice, IoU, HD95 and, with instance ids, GlaS object metrics.",
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--root", required=True, help="dataset name or folder in the reference layout")
    evaluate.add_argument(
        "--data-root",
        help="folder holding GlaS/ and MoNuSeg/ (default: the data_root stored in the checkpoint, then "
        "$ABLATION_DATA or ./data)",
    )
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    order = evaluate.add_mutually_exclusive_group()
    order.add_argument("--bgr", dest="bgr", action="store_const", const=True, help="feed BGR images")
    order.add_argument("--rgb", dest="bgr", action="store_const", const=False, help="feed RGB images")
    evaluate.add_argument(
        "--img-size", type=int, help="default: the checkpoint's training size (reference: 224)"
    )
    evaluate.add_argument("--device", help="cpu, cuda or cuda:N")
    evaluate.add_argument("--out", type=Path, help="write per-image metrics to this CSV")
    evaluate.set_defaults(handler=_evaluate, bgr=None)


def build_run_config(args: argparse.Namespace) -> Any:
    """Defaults, then --config, then the explicit flags, then --set, as a RunConfig."""
    from ablation.config import RunConfig, apply_overrides, from_dict
    from ablation.config_text import parse_assignments, read_config_file

    config = from_dict(RunConfig, read_config_file(args.config)) if args.config else RunConfig()
    flags = {
        "dataset": args.dataset,
        "seed": args.seed,
        "fold": args.fold,
        "repeat": args.repeat,
        "data_root": args.data_root,
        "model.connector": args.connector,
        "model.skips": args.skips,
        "model.base_channels": args.base_channels,
        "model.img_size": args.img_size,
        "train.max_epochs": args.epochs,
        "train.init_from": None if _init_folder(args) else args.init_from,
        "train.tensorboard": args.tensorboard,
    }
    overrides: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
    return apply_overrides(config, {**overrides, **parse_assignments(args.set)})


def _init_folder(args: argparse.Namespace) -> Path | None:
    """The run folder ``--init-from`` names, or None when it names a run by connector/skips (or is absent)."""
    init_from = getattr(args, "init_from", None)
    return Path(init_from) if init_from and Path(init_from).is_dir() else None


def _train(args: argparse.Namespace) -> int:
    from ablation.sources import resolve_in_folder
    from ablation.store.layout import run_name
    from ablation.train import train_run

    config = resolve_in_folder(build_run_config(args), args.out, _init_folder(args))
    run_dir = args.out / run_name(config)
    result = train_run(config, run_dir, device=args.device, progress=not args.quiet)
    print(f"run folder: {run_dir}")
    print(
        f"best epoch {result['best_epoch']} of {result['epochs_run']}; test Dice {result['dice_mean']:.4f} ± "
        f"{result['dice_std']:.4f} (per image), {result['dice_micro']:.4f} (pooled); IoU {result['iou_mean']:.4f}; "
        f"HD95 {result['hd95_mean']:.2f} px"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ablation.train.evaluate import evaluate_checkpoint

    _, summary = evaluate_checkpoint(
        args.checkpoint, args.root, split=args.split, bgr=args.bgr, img_size=args.img_size, device=args.device,
        out_csv=args.out, data_root=args.data_root,
    )  # fmt: skip
    for key, value in summary.items():
        print(f"{key:24s} {value:.4f}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.out is not None:
        print(f"per-image metrics: {args.out}")
    return 0
