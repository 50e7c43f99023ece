"""``ablation data convert`` and ``ablation data info``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command with its ``convert`` and ``info`` subcommands."""
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

    info = dataset_info(args.root, img_size=args.img_size, data_root=args.data_root, cache_dir=args.cache_dir)
    print(format_info(info))
    return 0
