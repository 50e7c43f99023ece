"""The ``--only`` filter language of ``ablation run`` and ``ablation status``. No torch import.

A filter is ``key=value`` (keys: :data:`FILTER_KEYS`; several values as ``key=a|b``), a glob on the run name when
it holds ``*``, ``?`` or ``[``, else a substring of the run name. A comma separates filters that must all match,
like repeating ``--only``.
"""

from __future__ import annotations

import fnmatch

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.skips import parse_skips
from ablation.store.layout import dataset_slug, name_fields, run_id, run_name, split_name

FILTER_KEYS: dict[str, str] = {
    "dataset": "dataset name or folder",
    "connector": "connector name",
    "skips": "skip subset (any form parse_skips accepts)",
    "seed": "seed",
    "fold": "fold index or 'official'",
    "repeat": "k-fold repeat",
    "split": "official or r<repeat>f<fold>",
    "run_id": "the 8-character config hash",
}


def run_fields(config: RunConfig) -> dict[str, str]:
    """The values ``--only key=value`` filters match, as strings."""
    return {
        "dataset": config.dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": str(config.seed),
        "fold": "official" if config.fold is None else str(config.fold),
        "repeat": str(config.repeat),
        "split": split_name(config),
        "run_id": run_id(config),
    }


def select_runs(configs: list[RunConfig], filters: list[str] | None) -> list[RunConfig]:
    """Keep the runs matching every filter (see the module docstring); no filters keep every run.

    Raises:
        AblationError: for a ``key=value`` filter with an unknown key or an invalid skip subset.
    """
    terms = _terms(filters)
    return [
        config
        for config in configs
        if all(_matches(run_fields(config), run_name(config), term) for term in terms)
    ]


def select_names(names: list[str], filters: list[str] | None) -> list[str]:
    """Keep the run folder names matching every filter, as :func:`select_runs` does, without the configs.

    ``key=value`` filters read the fields from the name (:func:`ablation.store.layout.name_fields`); a name in another
    form matches substring and glob filters only.
    """
    terms = _terms(filters)
    return [name for name in names if all(_matches(name_fields(name), name, term) for term in terms)]


def _terms(filters: list[str] | None) -> list[str]:
    return [term.strip() for text in filters or [] for term in text.split(",") if term.strip()]


def _matches(fields: dict[str, str] | None, name: str, term: str) -> bool:
    if "=" in term:
        key, _, value = term.partition("=")
        key = key.strip()
        if key not in FILTER_KEYS:
            raise AblationError(f"--only: unknown key {key!r}: valid keys are {', '.join(FILTER_KEYS)}")
        wanted = [v.strip() for v in value.split("|")]
        if key == "skips":
            wanted = [parse_skips(v) for v in wanted]
        if fields is None:
            return False
        if key == "dataset":  # a name holds the dataset's short form; "glas" and "data/GlaS" both match it
            return fields[key] in wanted or dataset_slug(fields[key]) in {dataset_slug(w) for w in wanted}
        return fields[key] in wanted
    if any(char in term for char in "*?["):
        return fnmatch.fnmatchcase(name, term)
    return term in name
