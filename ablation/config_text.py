"""Settings as users write them: a TOML or JSON file (``ablation train --config``, experiment specs) and
``--set KEY=VALUE`` texts. Both become plain tables here; :func:`ablation.config.from_dict` and
:func:`ablation.config.apply_overrides` turn them into configs. No torch import.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ablation.errors import AblationError


def parse_assignments(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` texts as overrides for :func:`ablation.config.apply_overrides`.

    ``none``/``null`` -> None, a JSON list -> list, anything else stays text (typed by :func:`ablation.config.apply_overrides`).

    Raises:
        AblationError: an item without ``=`` or key, or a list that does not parse.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise AblationError(f"{flag} {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        value: Any = text
        if text.strip().lower() in ("none", "null"):
            value = None
        elif text.strip().startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise AblationError(f"{flag} value {text!r} is not a valid list") from None
        overrides[key.strip()] = value
    return overrides


def read_config_file(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The table of a settings file, ``.toml`` or ``.json``: ``ablation train --config`` and experiment specs.

    Args:
        path: the file.
        what: how messages call it (``config file``, ``spec file``).

    Raises:
        AblationError: naming the file when it is missing, unreadable, not UTF-8 text, not valid TOML/JSON, not a
            table of keys at the top, or has another suffix.
    """
    path = Path(path)
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix.lower())
    if not path.is_file():
        raise AblationError(f"{what} not found: {path}")
    if kind is None:
        raise AblationError(f"{what} {path}: unknown format {path.suffix!r}, use .toml or .json")
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except UnicodeDecodeError as error:
        raise AblationError(f"{path}: not a {kind} text file (byte {error.start} is not UTF-8)") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise AblationError(f"{path}: invalid {kind}: {error}") from None
    except OSError as error:
        raise AblationError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not isinstance(data, dict):
        raise AblationError(f"{path}: expected a table of keys at the top, found {type(data).__name__}")
    return data
