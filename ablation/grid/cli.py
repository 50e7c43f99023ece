"""``ablation run``, ``ablation status`` and ``ablation demo``: thin wrappers over :mod:`ablation.grid`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ablation.errors import AblationError

if TYPE_CHECKING:
    from ablation.config import RunConfig

    from .status import RunState

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_SPEC = REPO_ROOT / "experiments" / "demo.toml"
DEMO_OUT = "results/demo"


def _demo_workers() -> int:
    """One single-threaded worker per core (up to 8): tiny runs gain nothing from several threads each, and
    on a busy 2-core machine two threads per run were measured up to 20x slower per epoch than one."""
    from .gpus import available_cores

    return max(1, min(available_cores(), 8))


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run an experiment grid (skips finished runs, resumes interrupted ones)",
        description="Expand an experiment spec into runs and execute those not done yet. Failed runs are "
        "retried on every invocation unless --skip-failed is given.",
    )
    run.add_argument("spec", help="experiment spec (TOML), e.g. experiments/paper_skip_study.toml")
    run.add_argument("--out", help="results folder (default: the spec's 'out', results/<name>)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list every run with its status and totals, then the grid's cost (image passes, FLOPs, an "
        "estimated wall time where a throughput is known); run none",
    )
    run.add_argument(
        "--throughput",
        type=float,
        metavar="IMG_PER_S",
        help="training images per second for the --dry-run wall-time estimate (default: the table measured "
        "for this device in results/benchmarks/)",
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="FILTER",
        help="keep runs matching a substring or glob of the run name, or key=value (dataset, connector, skips, "
        "seed, fold, repeat, split, run_id); repeat or separate by commas to combine",
    )
    run.add_argument(
        "--workers", type=int, help="worker processes, at most 256 (default: one per GPU, else 1 in-process)"
    )
    run.add_argument("--workers-per-gpu", type=int, default=1, help="workers sharing each GPU (default: 1)")
    run.add_argument("--gpus", help="GPU ids to use, e.g. 0,1 (default: every visible GPU)")
    run.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="scheduler (default: local)"
    )
    run.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray instance)")
    run.add_argument(
        "--storage", help="results folder shared by every Ray node (same path everywhere); replaces --out"
    )
    run.add_argument("--cpus-per-run", type=int, default=1, help="CPUs each Ray task reserves (default: 1)")
    run.add_argument(
        "--pack-size",
        help="runs trained together in one model pass: 'auto' (fit the GPU; 1 on CPU) or an integer "
        "(overrides the spec's pack_size)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model.* or train.* key of every run, e.g. train.max_epochs=2 (part of each run's "
        "identity: new run folders)",
    )
    run.add_argument("--skip-failed", action="store_true", help="leave runs that failed before as failed")
    run.add_argument(
        "--rerun-stale",
        action="store_true",
        help="train again done runs whose data or splits file changed since they ran (their old files are "
        "moved to RESULTS/.replaced/); by default they are kept and listed as stale",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(handler=run_command)

    status = subparsers.add_parser(
        "status",
        help="list the runs of a results folder: done, running, failed (with error), pending",
        description="List the runs of a results folder with their state: done (flagged stale when its data or "
        "split changed since), running, failed (with the error), pending, or damaged (a file of the run cannot be "
        "read, does not describe the run, or its checkpoint cannot be resumed from).",
    )
    status.add_argument("results_dir", help="the grid's results folder")
    status.add_argument("--spec", help="the experiment spec, to list its runs that have not started")
    status.add_argument(
        "--only",
        action="append",
        metavar="FILTER",
        help="as for `ablation run`; without --spec the fields are read from the run folder names",
    )
    status.add_argument(
        "--quiet",
        action="store_true",
        help="print only failed, running, damaged and stale runs and the totals",
    )
    status.set_defaults(handler=status_command)

    demo = subparsers.add_parser(
        "demo",
        help="run experiments/demo.toml (tiny models, synthetic data) and write its report",
        description="Run the demo grid of experiments/demo.toml (all 16 skip subsets of a tiny U-Net and the "
        "other connectors with all skips, on two synthetic datasets; a few minutes on a CPU) and write its "
        "report into the results folder. Finished runs are kept: a second call only writes the report again.",
    )
    demo.add_argument("--out", default=DEMO_OUT, help=f"results folder (default: {DEMO_OUT})")
    demo.add_argument("--workers", type=int, help="worker processes (default: one per core, at most 8)")
    demo.add_argument("--no-report", action="store_true", help="only run the grid")
    demo.set_defaults(handler=demo_command)


def run_command(args: argparse.Namespace) -> int:
    from ablation.config_text import parse_assignments
    from ablation.train.tensorboard_log import check_tensorboard

    from .datasets import check_datasets
    from .gpus import check_gpus, parse_gpus
    from .local import check_workers
    from .order import check_sources
    from .runner import check_results_dir, run_grid
    from .spec import expand_spec, load_spec, override_spec
    from .spec_keys import parse_pack_size
    from .status import iter_grid_status

    # The flags first: a bad value is an error even when every run is done and nothing would use it.
    check_workers(args.workers, "--workers")
    check_workers(args.workers_per_gpu, "--workers-per-gpu")
    # --cpus-per-run: at most the Ray cluster's CPUs, checked on connecting
    _check_positive(args.cpus_per_run, "--cpus-per-run")
    pack_size = None if args.pack_size is None else parse_pack_size(args.pack_size, "--pack-size")
    gpus = parse_gpus(args.gpus)
    if gpus is not None and args.backend == "local":  # a dry run too: it must fail where the run would
        check_gpus(gpus)
    if args.throughput is not None:
        if not args.dry_run:
            raise AblationError("--throughput only applies to --dry-run (the wall-time estimate)")
        if not (math.isfinite(args.throughput) and args.throughput > 0):
            raise AblationError(
                f"--throughput must be a positive number of images per second, got {args.throughput}"
            )
    if args.out and args.storage and Path(args.out).resolve() != Path(args.storage).resolve():
        raise AblationError(
            "--out and --storage name different folders: give one (--storage for Ray clusters)"
        )
    spec = override_spec(load_spec(args.spec), parse_assignments(args.set))
    configs = _selected(expand_spec(spec), args.only)
    results_dir = check_results_dir(args.storage or args.out or spec.out)
    # A dry run lists runs without reading data; a Ray cluster's nodes may hold data this machine lacks.
    lenient = args.dry_run or (args.backend == "ray" and args.ray_address is not None)
    for warning in check_datasets(spec, configs, strict=not lenient):
        print(warning, file=sys.stderr)
    check_sources(configs, results_dir)  # a source --only left out must be done already
    if args.dry_run:
        _print_states(iter_grid_status(results_dir, configs), results_dir, quiet=False)
        requested = spec.pack_size if args.pack_size is None else pack_size
        for line in _cost_lines(configs, args, gpus, requested):
            print(line)
        return 0
    check_tensorboard(configs)
    summary = run_grid(
        configs,
        results_dir,
        backend=args.backend,
        workers=args.workers,
        gpus=gpus,
        workers_per_gpu=args.workers_per_gpu,
        ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run,
        pack_size=spec.pack_size if args.pack_size is None else pack_size,
        retry_failed=not args.skip_failed,
        rerun_stale=args.rerun_stale,
        progress=not args.no_progress,
        spec_name=spec.name,
    )
    print(summary.format())
    return summary.exit_code


def status_command(args: argparse.Namespace) -> int:
    from .filters import select_names
    from .spec import expand_spec
    from .status import grid_status

    results_dir = Path(args.results_dir)
    if args.spec is None and not results_dir.is_dir():
        raise AblationError(f"results folder not found: {results_dir}")
    if args.spec is not None:
        states = grid_status(results_dir, _selected(expand_spec(args.spec), args.only))
    else:  # the runs the folder knows; --only then reads its fields from the run folder names
        states = grid_status(results_dir)
        if states and args.only:
            kept = set(select_names([state.name for state in states], args.only))
            states = [state for state in states if state.name in kept]
            if not states:
                raise AblationError(f"no run in {results_dir} matches --only {' '.join(args.only)!r}")
    if not states:
        print(f"no runs in {results_dir} (give --spec to list the runs a spec would add)")
        return 0
    _print_states(states, results_dir, quiet=args.quiet)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from .local import check_workers
    from .runner import check_results_dir, run_grid
    from .spec import load_spec

    check_workers(args.workers, "--workers")
    check_results_dir(args.out)
    if not DEMO_SPEC.is_file():
        raise AblationError(
            f"demo spec not found at {DEMO_SPEC}: `ablation demo` runs from a source checkout "
            "(git clone, then make demo); elsewhere use `ablation run <spec>`"
        )
    spec = load_spec(DEMO_SPEC)
    started = time.time()
    workers = _demo_workers() if args.workers is None else args.workers
    summary = run_grid(
        spec.expand(), args.out, workers=workers, pack_size=spec.pack_size, spec_name=spec.name
    )
    print(summary.format())
    if not args.no_report:
        from ablation.report import write_report

        print(f"report: {write_report(Path(args.out))}")
    print(f"demo finished in {time.time() - started:.0f} s")
    return summary.exit_code


def _cost_lines(
    configs: list[RunConfig], args: argparse.Namespace, gpus: list[str] | None, pack_size: int | None
) -> list[str]:
    """The grid's cost for ``--dry-run`` (:mod:`ablation.grid.cost`): on the GPUs the run would use, the first
    one's name picks the throughput table; without a GPU, the CPU's."""
    from .cost import estimate_cost, format_cost
    from .gpus import detect_gpus, gpu_names
    from .runner import resolve_pack_size

    devices = list(gpus) if gpus is not None else detect_gpus()
    names = gpu_names(devices)
    device = names[0] if names else (None if devices else "cpu")
    cost = estimate_cost(
        configs,
        device=device,
        throughput=args.throughput,
        pack_size=resolve_pack_size(pack_size, configs, args.backend, gpus),
        devices=max(1, len(devices)),
    )
    return format_cost(cost)


def _check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise AblationError(f"{flag} must be >= 1, got {value}")


def _selected(configs: list[RunConfig], filters: list[str] | None) -> list[RunConfig]:
    from .filters import select_runs

    selected = select_runs(configs, filters)
    if not selected:
        raise AblationError(f"no run matches --only {' '.join(filters or [])!r}")
    return selected


def _print_states(states: Iterable[RunState], results_dir: Path, *, quiet: bool) -> None:
    """One line per run as it is read (a long listing starts at once), then the totals."""
    counts: Counter[str] = Counter()
    for state in states:
        counts[state.status] += 1
        counts["stale"] += state.stale
        if quiet and state.status not in ("failed", "running", "damaged") and not state.stale:
            continue
        detail = f"  ({state.detail})" if state.detail else ""
        print(f"{state.status:<8} {state.name}{detail}", flush=True)
    kinds = ("done", "running", "failed", "pending", *(["damaged"] if counts["damaged"] else []))
    totals = ", ".join(f"{counts.get(kind, 0)} {kind}" for kind in kinds)
    if counts["stale"]:
        totals = totals.replace(" done", f" done ({counts['stale']} stale)", 1)
    print(f"{sum(counts[kind] for kind in kinds)} runs in {results_dir}: {totals}")
