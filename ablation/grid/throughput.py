"""Measured training throughputs for the cost estimate: the benchmark tables in ``results/benchmarks/``.

``benchmarks/packed_training.py`` writes one table per device (``{"meta": {"device", "base", "size", "batch",
...}, "records": [{"model", "method", "k", "images_per_s", ...}]}``). :func:`load_throughput_tables` reads the rows
of one device; :func:`pick_throughput` chooses, for runs the grid will train together, the closest measurement
(same connector, single run or pack, nearest pack size, then the engine settings of the runs' ``TrainConfig``:
``compile``, ``cuda_graphs``, ``deterministic``, ``channels_last``, ``pack_conv``) and scales it by forward FLOPs when the measured
model's width, image size or connector differ. Used by :mod:`ablation.grid.cost`; no torch import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation.config import CONNECTORS, PACK_CONVS, ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.skips import NUM_SKIPS

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_DIR = REPO_ROOT / "results" / "benchmarks"
ALL_SKIPS = "1" * NUM_SKIPS
# The TrainConfig keys that change the engine's speed and that a benchmark row records, in the order they break
# ties between rows that differ from the runs in as many of them.
ENGINE_SETTINGS = ("compile", "cuda_graphs", "deterministic", "channels_last", "pack_conv")


@dataclass(frozen=True)
class ThroughputRow:
    """One measured training throughput from a benchmark table.

    Attributes:
        source: the table file, relative to the repository when inside it.
        connector: the model measured (a key of :data:`ablation.config.CONNECTORS`).
        method: ``single`` (one run) or ``packed`` (``k`` runs in one model pass).
        k: runs trained together.
        compiled: measured with ``torch.compile`` (``train.compile``).
        images_per_s: training images per second summed over the ``k`` runs.
        base_channels, img_size, batch_size: the measured setting.
        cuda_graphs: the step captured in a CUDA graph (``train.cuda_graphs``).
        deterministic: deterministic algorithms, cuDNN autotuning off (``train.deterministic``); a row without
            ``det`` in its method ran autotuned.
        channels_last: the table's memory format unless the method says ``nchw`` (``train.channels_last``).
        pack_conv: ``grouped`` or ``per_variant`` (``train.pack_conv``); None where the method does not say
            (the earlier vmap engine's rows).

    ``compiled``, ``cuda_graphs``, ``deterministic`` and ``channels_last`` are None in a CPU table: they change
    nothing there (compile, CUDA graphs and channels_last apply on CUDA only; every CPU kernel used is
    deterministic either way).
    """

    source: str
    connector: str
    method: str
    k: int
    compiled: bool | None
    images_per_s: float
    base_channels: int
    img_size: int
    batch_size: int
    cuda_graphs: bool | None
    deterministic: bool | None
    channels_last: bool | None
    pack_conv: str | None

    def describe(self) -> str:
        """``results/benchmarks/x.json: unet pack of 48, grouped convolutions, CUDA graphs, deterministic``."""
        kind = "single run" if self.method == "single" else f"pack of {self.k}"
        settings = [
            *([f"{self.pack_conv} convolutions"] if self.pack_conv and self.method == "packed" else []),
            *(["compiled"] if self.compiled else []),
            *(["CUDA graphs"] if self.cuda_graphs else []),
            *(["deterministic"] if self.deterministic else []),
            *(["NCHW"] if self.channels_last is False else []),
        ]
        return f"{self.source}: {self.connector} {kind}{''.join(f', {item}' for item in settings)}"

    def differences(self, train: TrainConfig, k: int) -> list[str]:
        """The keys of :data:`ENGINE_SETTINGS` whose value in ``train`` (for ``k`` runs trained together) this
        row was not measured with; a setting that changes nothing on the row's device is left out, and
        ``pack_conv`` counts only for a pack (a row that does not record it differs)."""
        measured = {
            "compile": self.compiled,
            "cuda_graphs": self.cuda_graphs,
            "deterministic": self.deterministic,
            "channels_last": self.channels_last,
            "pack_conv": self.pack_conv if k > 1 else train.pack_conv,
        }
        return [
            key
            for key in ENGINE_SETTINGS
            if measured[key] != getattr(train, key) and (measured[key] is not None or key == "pack_conv")
        ]


def load_throughput_tables(folder: str | Path, device: str) -> list[ThroughputRow]:
    """The measured training throughputs of ``device`` in the benchmark tables (``*.json``) of ``folder``.

    Tables of other devices, files in other formats and rows without a throughput (a failed measurement, the
    reference-style ``baseline`` loop) are left out. Device names match ignoring case and punctuation.
    """
    folder = Path(folder)
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            content = read_json(path)
        except AblationError:
            continue
        meta = content.get("meta") if isinstance(content, dict) else None
        records = content.get("records") if isinstance(content, dict) else None
        if not isinstance(meta, dict) or not isinstance(records, list):
            continue
        if _slug(str(meta.get("device", ""))) != _slug(device):
            continue
        for record in records:
            row = _throughput_row(record, meta, _shown(path))
            if row is not None:
                rows.append(row)
    return rows


def pick_throughput(
    rows: list[ThroughputRow], config: RunConfig, k: int, flops: Callable[[ModelConfig], float | None]
) -> tuple[float, str] | None:
    """The measurement closest to how ``k`` runs like ``config`` train together, and its img/s for them.

    Preference: the same connector (else the one nearest in FLOPs at the grid's model size), the same kind
    (single run or pack), the nearest pack size, the fewest engine settings that differ from the runs'
    (:meth:`ThroughputRow.differences`; ties broken in the order of :data:`ENGINE_SETTINGS`), then the
    same model size. A measurement of another model size or connector is scaled by the ratio of forward FLOPs
    (all skips on both sides: a pack computes every skip). The returned text names the row and the settings of
    the runs it was not measured with (``; unlike the runs' train.deterministic=true``).
    """
    method = "single" if k == 1 else "packed"
    target = dataclasses.replace(config.model, skips=ALL_SKIPS)
    target_flops = flops(target)
    best: tuple[tuple, float, str] | None = None
    for row in rows:
        measured = dataclasses.replace(
            target, connector=row.connector, base_channels=row.base_channels, img_size=row.img_size
        )
        scale, likeness = 1.0, 0.0
        if measured != target:
            measured_flops = flops(measured)
            same_size = flops(dataclasses.replace(target, connector=row.connector))
            if measured_flops is None or same_size is None or target_flops is None:
                continue
            scale, likeness = measured_flops / target_flops, abs(math.log(same_size / target_flops))
        differences = row.differences(config.train, k)
        rank = (
            row.connector != config.model.connector,
            likeness,
            row.method != method,
            abs(math.log(row.k / k)),
            len(differences),
            tuple(key in differences for key in ENGINE_SETTINGS),
            measured != target,
        )
        if best is None or rank < best[0]:
            source = row.describe()
            if measured != target:
                source += ", scaled by FLOPs"
            if (row.base_channels, row.img_size) != (target.base_channels, target.img_size):
                source += f" from base {row.base_channels}, {row.img_size} px"
            if row.batch_size != config.train.batch_size:
                source += f", measured at batch {row.batch_size}"
            if differences:
                unlike = ", ".join(
                    f"train.{key}={_setting(getattr(config.train, key))}" for key in differences
                )
                source += f"; unlike the runs' {unlike}"
            best = (rank, row.images_per_s * scale, source)
    return None if best is None else (best[1], best[2])


def _throughput_row(record: Any, meta: dict[str, Any], source: str) -> ThroughputRow | None:
    """A benchmark record as a row, or None when it has no usable training throughput for our runs."""
    if not isinstance(record, dict):
        return None
    family, *options = str(record.get("method", "")).split("+")
    rate = record.get("images_per_s")
    fields = (meta.get("base"), meta.get("size"), meta.get("batch"), record.get("k"))
    if (
        family not in ("single", "packed")  # "baseline" is the reference-style loop, not how the grid trains
        or record.get("model") not in CONNECTORS
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or rate <= 0
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in fields)
    ):
        return None
    base, size, batch, k = fields
    on_cuda = (
        _slug(str(meta.get("device", ""))) != "cpu"
    )  # compile, graphs, determinism change nothing on CPU
    return ThroughputRow(
        source=source,
        connector=record["model"],
        method=family,
        k=k,
        compiled="compile" in options if on_cuda else None,
        images_per_s=float(rate),
        base_channels=base,
        img_size=size,
        batch_size=batch,
        cuda_graphs="graph" in options if on_cuda else None,
        deterministic="det" in options if on_cuda else None,
        channels_last=meta.get("channels_last") is not False and "nchw" not in options if on_cuda else None,
        pack_conv=next((conv for conv in PACK_CONVS if conv in options), None),
    )


def _setting(value: Any) -> str:
    """A setting as a spec writes it: ``true``, ``grouped``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _slug(name: str) -> str:
    return "".join(char for char in name.lower() if char.isalnum())


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
