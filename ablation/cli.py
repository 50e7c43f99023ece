"""Command-line entry point: ``ablation <command>`` and ``python -m ablation <command>``.

Each area registers its own subcommands (``register(subparsers)`` in ``ablation/<area>/cli.py``); a handler calls
one library function. Handlers import torch lazily so ``ablation report`` works without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ablation.errors import AblationError

# Modules that contribute subcommands, in help order. Each must import: a missing one is a broken install.
COMMAND_MODULES = (
    "ablation.models.cli",
    "ablation.data.cli",
    "ablation.train.cli",
    "ablation.grid.cli",
    "ablation.report.cli",
    "ablation.predict.cli",
    "ablation.export_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablation", description="Skip-connection ablation studies for U-Net and UCTransNet."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ablation models | head`: the reader left; not an error
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # a file system problem the handlers did not foresee: still one actionable line
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
