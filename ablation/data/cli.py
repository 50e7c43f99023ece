"""``ablation data convert``, ``ablation data info`` and ``ablation data prepare``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command with its ``convert``, ``info`` and ``prepare`` subcommands."""
    parser = subparsers.add_parser("data", help="convert official dataset downloads; summarise a dataset")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    convert = commands.add_parser(
        "convert",
        help="convert an official GlaS/MoNuSeg download to the reference layout",
        description="Write <Split>_Folder/{img,labelcol,instances}/ from an official download (see docs/data.md).",
    )
    convert.add_argument("--from", dest="source", required=True, metavar="DIR", help="the official download")
    # A free string (checked by the library) so a wrong name gives the one-line `error:` of every other input.
    convert.add_argument("--layout", required=True, help="glas-official or monuseg-official")
    convert.add_argument(
        "--to", dest="target", required=True, metavar="DIR", help="the dataset folder to write"
    )
    convert.add_argument(
        "--split",
        default=None,
        help="monuseg-official: train, val or test (default: train for 'Tissue Images/')",
    )
    convert.add_argument("--force", action="store_true", help="write into split folders that already exist")
    convert.set_defaults(handler=_convert)

    info = commands.add_parser("info", help="counts, sizes, foreground fraction and label kind of a dataset")
    info.add_argument("--root", required=True, metavar="DIR_OR_NAME", help="a dataset name or folder")
    info.add_argument(
        "--img-size", type=int, default=224, help="size to prepare at (default 224, like the paper)"
    )
    info.add_argument(
        "--data-root", default=None, help="folder holding GlaS/ and MoNuSeg/ (default $ABLATION_DATA)"
    )
    info.add_argument("--cache-dir", default=None, help="prepared-data cache (default $ABLATION_CACHE)")
    info.set_defaults(handler=_info)

    prepare = commands.add_parser(
        "prepare",
        help="copy a prepared dataset and its splits file into a folder, to train without the dataset folder",
        description="Prepare glas or monuseg at one size here (the cache and k-fold splits file every run here "
        "uses) and write a compressed copy of both into --to. On a machine without the dataset, point "
        "$ABLATION_CACHE at that folder: runs there train from it with the same identity, dataset fingerprint "
        "and splits as here (see docs/data.md).",
    )
    prepare.add_argument("--root", required=True, metavar="NAME", help="glas or monuseg")
    prepare.add_argument("--to", required=True, metavar="DIR", help="the folder to write (a cache folder)")
    prepare.add_argument("--img-size", type=int, default=224, help="the runs' image size (default 224)")
    prepare.add_argument(
        "--interpolation", default="reference", help="the runs' resizing (default reference)"
    )
    prepare.add_argument("--num-folds", type=int, default=5, help="k of the runs' k-fold splits (default 5)")
    prepare.add_argument("--repeats", type=int, default=1, help="k-fold repeats the runs use (default 1)")
    prepare.add_argument(
        "--data-root", default=None, help="folder holding GlaS/ and MoNuSeg/ (default $ABLATION_DATA)"
    )
    prepare.add_argument(
        "--cache-dir", default=None, help="this machine's cache, read and filled (default $ABLATION_CACHE)"
    )
    prepare.set_defaults(handler=_prepare)


def _convert(args: argparse.Namespace) -> int:
    from ablation.data.official import convert

    counts = convert(
        args.source, layout=args.layout, target=args.target, split=args.split, overwrite=args.force
    )
    written = ", ".join(f"{split} {count}" for split, count in counts.items())
    print(f"wrote {written} images to {args.target}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ablation.data.info import dataset_info, format_info
    from ablation.limits import check_img_size

    check_img_size(args.img_size, "--img-size")  # the sizes runs take, as data prepare and ModelConfig check
    info = dataset_info(args.root, img_size=args.img_size, data_root=args.data_root, cache_dir=args.cache_dir)
    print(format_info(info))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from ablation.data.carry import copy_prepared

    written = copy_prepared(
        args.root,
        to=args.to,
        img_size=args.img_size,
        interpolation=args.interpolation,
        num_folds=args.num_folds,
        repeats=args.repeats,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
    )
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
