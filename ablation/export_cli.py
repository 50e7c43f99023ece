"""``ablation export RESULTS --slim OUT.tar.gz``: a results folder's slim archive (:mod:`ablation.export`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="pack a results folder's done runs (no checkpoints) into one .tar.gz",
        description="Write a slim archive of RESULTS: every done run's config, status, history, test and "
        "masked metrics and metrics.json, predictions only for the runs the qualitative figure shows, failed "
        "runs' config and status, and grid.json; never checkpoints, locks or running runs. Unpack it into a "
        "folder and run `ablation report` there.",
    )
    parser.add_argument("results_dir", metavar="RESULTS", help="folder holding run folders")
    parser.add_argument(
        "--slim",
        metavar="OUT.tar.gz",
        required=True,
        help="the archive to write (outside RESULTS; an existing archive is replaced)",
    )
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from ablation.export import export_slim

    print(export_slim(args.results_dir, args.slim).format())
    return 0
