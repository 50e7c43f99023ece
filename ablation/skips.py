"""Skip-connection subsets of a four-level U-Net, as studied in UCTransNet (Wang et al., AAAI 2022, Fig. 3).

A subset is data, never a subclass: the canonical form is four characters in L1..L4 order, ``"1011"``, where L1 is
the shallowest skip (full resolution, base channels) and L4 the deepest (1/8 resolution). This module has no
torch dependency so reports can use it.
"""

from __future__ import annotations

import itertools
import re

from ablation.errors import AblationError

NUM_SKIPS = 4
ACCEPTED_FORMS = "4 characters of 0/1 in L1..L4 order ('1011'), 'L1+L3+L4', 'all' or 'none'"

# All 16 subsets, ordered by number of active skips then lexicographically (none first, all last).
ALL_SUBSETS: tuple[str, ...] = tuple(
    sorted(
        ("".join(bits) for bits in itertools.product("01", repeat=NUM_SKIPS)),
        key=lambda s: (s.count("1"), [-int(c) for c in s]),
    )
)
SINGLE_SUBSETS: tuple[str, ...] = tuple(s for s in ALL_SUBSETS if s.count("1") == 1)
LEAVE_ONE_OUT_SUBSETS: tuple[str, ...] = tuple(s for s in ALL_SUBSETS if s.count("1") == NUM_SKIPS - 1)
PAIR_SUBSETS: tuple[str, ...] = tuple(s for s in ALL_SUBSETS if s.count("1") == 2)
# The settings of the paper's Fig. 3: none, all, each single skip and leaving one out (pairs left out "for space").
PAPER_SUBSETS: tuple[str, ...] = ("0000", "1111", *SINGLE_SUBSETS, *LEAVE_ONE_OUT_SUBSETS)

_LEVELS_RE = re.compile(r"^L[1-4](\+L[1-4])*$", re.IGNORECASE)


def parse_skips(spec: str | tuple[bool, ...] | list[bool]) -> str:
    """Return the canonical 4-character form of a skip subset.

    Args:
        spec: ``"1011"``, ``"L1+L3+L4"``, ``"all"``, ``"none"`` (case-insensitive), or a sequence of 4 booleans.

    Raises:
        AblationError: for anything else, listing the accepted forms.
    """
    if isinstance(spec, (tuple, list)):
        if len(spec) == NUM_SKIPS and all(isinstance(b, bool) for b in spec):
            return "".join("1" if b else "0" for b in spec)
        raise AblationError(f"invalid skip subset {spec!r}: expected {ACCEPTED_FORMS}")
    if not isinstance(spec, str):
        raise AblationError(f"invalid skip subset {spec!r}: expected {ACCEPTED_FORMS}")
    text = spec.strip()
    lowered = text.lower()
    if lowered == "all":
        return "1" * NUM_SKIPS
    if lowered == "none":
        return "0" * NUM_SKIPS
    if len(text) == NUM_SKIPS and set(text) <= {"0", "1"}:
        return text
    if _LEVELS_RE.match(text):
        levels = {int(part[1]) for part in text.split("+")}
        return "".join("1" if level in levels else "0" for level in range(1, NUM_SKIPS + 1))
    raise AblationError(f"invalid skip subset {spec!r}: expected {ACCEPTED_FORMS}")


def skip_flags(spec: str) -> tuple[bool, bool, bool, bool]:
    """The subset as four booleans in L1..L4 order."""
    canonical = parse_skips(spec)
    return tuple(c == "1" for c in canonical)  # type: ignore[return-value]


def skip_label(spec: str) -> str:
    """Human-readable name: ``"none"``, ``"all"``, or ``"L1+L3+L4"``."""
    canonical = parse_skips(spec)
    if canonical == "0" * NUM_SKIPS:
        return "none"
    if canonical == "1" * NUM_SKIPS:
        return "all"
    return "+".join(f"L{i + 1}" for i, c in enumerate(canonical) if c == "1")


def paper_label(spec: str) -> str:
    """The name the paper's Fig. 3 uses: U-Net-none, U-Net-all, L3 alone, w/o L4, or the levels for pairs."""
    canonical = parse_skips(spec)
    ones = canonical.count("1")
    if ones == NUM_SKIPS - 1:
        return f"w/o L{canonical.index('0') + 1}"
    if ones == 1:
        return f"L{canonical.index('1') + 1} only"
    return skip_label(canonical)


def expand_subsets(spec: str | list[str]) -> list[str]:
    """Expand a grid's subset selection: ``"all"`` (all 16), ``"paper"`` (Fig. 3 settings) or a list of specs."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "all":
            return list(ALL_SUBSETS)
        if key == "paper":
            return list(PAPER_SUBSETS)
        return [parse_skips(spec)]
    if isinstance(spec, list):
        out: list[str] = []
        for item in spec:
            canonical = parse_skips(item)
            if canonical not in out:
                out.append(canonical)
        return out
    raise AblationError(
        f"invalid subsets selection {spec!r}: expected 'all', 'paper' or a list of {ACCEPTED_FORMS}"
    )
