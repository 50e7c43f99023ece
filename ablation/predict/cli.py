"""``ablation predict``: masks (and overlays, and scores against given masks) for a folder of new images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation.config import CONNECTORS
from ablation.errors import AblationError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict masks for a folder of images with a run, a checkpoint or a study's best subset",
        description="Predict a 0/255 mask and an overlay for every image of a folder (PNG, JPEG, BMP, TIFF; "
        "any size) at the model's training size, resized back to each image's own size; with --masks also "
        "score them. --study picks the skip subset with the best mean validation Dice in a results folder and "
        "averages its replicates (an ensemble).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="a run folder (its checkpoint_best.pt)")
    source.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="our checkpoint_*.pt or a reference UCTransNet checkpoint",
    )
    source.add_argument("--study", type=Path, metavar="RESULTS", help="a study's results folder")
    parser.add_argument("--dataset", help="with --study: the dataset whose runs to use")
    parser.add_argument("--connector", help=f"with --study: {', '.join(CONNECTORS)}")
    parser.add_argument("--subset", help="with --study: use this skip subset instead of the best one")
    parser.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of images")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (may exist)")
    parser.add_argument(
        "--masks", type=Path, metavar="DIR", help="ground-truth masks <stem>.png to score against"
    )
    parser.add_argument("--tta", action="store_true", help="average over the 8 flips and 90-degree rotations")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--bgr", dest="bgr", action="store_const", const=True, help="feed BGR images")
    order.add_argument("--rgb", dest="bgr", action="store_const", const=False, help="feed RGB images")
    parser.add_argument(
        "--img-size",
        type=int,
        help="training size of a reference checkpoint (default 224); runs use their own",
    )
    parser.add_argument("--threshold", type=float, help="probability cut (default: the models' own, 0.5)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.set_defaults(handler=_predict, bgr=None)


def _check_flags(args: argparse.Namespace) -> None:
    study_flags = [flag for flag in ("dataset", "connector", "subset") if getattr(args, flag) is not None]
    if args.study is None and study_flags:
        raise AblationError(f"--{study_flags[0]} applies to --study only")
    if args.study is not None:
        missing = [flag for flag in ("dataset", "connector") if getattr(args, flag) is None]
        if missing:
            raise AblationError(f"--study needs --{missing[0]}")
    if args.img_size is not None and args.checkpoint is None:
        raise AblationError(
            "--img-size applies to --checkpoint only: a run predicts at its own training size"
        )
    if args.run is not None and args.run.is_file():
        raise AblationError(f"--run {args.run} is a file: give its run folder, or pass it with --checkpoint")
    if args.checkpoint is not None and args.checkpoint.is_dir():
        raise AblationError(f"--checkpoint {args.checkpoint} is a folder: use --run for a run folder")


def _predict(args: argparse.Namespace) -> int:
    from ablation.predict import predict as prediction

    _check_flags(args)
    options = {
        "masks_dir": args.masks, "tta": args.tta, "bgr": args.bgr, "threshold": args.threshold,
        "device": args.device, "batch_size": args.batch_size,
    }  # fmt: skip
    if args.study is not None:
        choice, result = prediction.predict_study(
            args.study, args.dataset, args.connector, args.images, args.out, subset=args.subset, **options
        )
        best = next(entry for entry in choice.subsets if entry["skips"] == choice.skips)
        print(
            f"subset {choice.skips} ({best['label']}): mean validation Dice {best['val_dice_mean']:.4f} over "
            f"{len(choice.runs)} runs ({choice.chosen_by}); ensemble of {len(choice.runs)}"
        )
        for line in choice.left_out:
            print(f"left out {line}")
    else:
        result = prediction.predict_folder(
            args.run or args.checkpoint, args.images, args.out, img_size=args.img_size, **options
        )
    out = args.out
    print(
        f"{len(result.written)} masks in {out / prediction.MASKS_FOLDER}, overlays in "
        f"{out / prediction.OVERLAYS_FOLDER}, record {out / prediction.RECORD_FILE}"
    )
    if result.summary is not None and result.rows:
        summary = result.summary
        object_part = f"; object F1 {summary['object_f1_mean']:.4f}" if "object_f1_mean" in summary else ""
        print(
            f"{summary['num_images']} images scored: Dice {summary['dice_mean']:.4f} ± "
            f"{summary['dice_std']:.4f} (per image), {summary['dice_micro']:.4f} (pooled); IoU "
            f"{summary['iou_mean']:.4f}; HD95 {summary['hd95_mean']:.2f} px{object_part}; per image: "
            f"{out / prediction.METRICS_CSV}"
        )
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    return 2 if result.errors else 0
