"""``ablation report RESULTS_DIR [--out DIR]``: tables, figures, statistics and findings of a results folder."""

from __future__ import annotations

import argparse

# Bootstrap resamples are held in memory at once (resamples x test images): 10^5 is already far past where the
# confidence intervals stop moving.
MAX_BOOTSTRAP = 100_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write tables, figures, statistics and findings for a results folder",
        description="Write the report of a results folder (default into RESULTS_DIR/report). Missing and failed "
        "runs are listed in the report, not fatal.",
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder holding run folders")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="report folder (default RESULTS_DIR/report)"
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ablation.errors import AblationError
    from ablation.report import write_report

    if not 100 <= args.n_boot <= MAX_BOOTSTRAP:
        raise AblationError(f"--n-boot must be in 100..{MAX_BOOTSTRAP}, got {args.n_boot}")
    out = write_report(args.results_dir, args.out, n_boot=args.n_boot)
    print(f"report written to {out} (index: {out / 'README.md'})")
    return 0
