"""Byte units. Everything inside `capacity` is in bytes; these helpers only format and parse.

GB is 10**9 bytes and GiB is 2**30 bytes; the two are always labelled, never an
unlabelled "GB" that means GiB (see shared/BRIEF.md, "Units").
"""

from __future__ import annotations

import re

GB = 10**9
GiB = 2**30
MB = 10**6
MiB = 2**20

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": MB, "gb": GB, "tb": 10**12,
    "kib": 2**10, "mib": MiB, "gib": GiB, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float) -> int:
    """Parse '16GB', '16 GiB', '8e9' or a number of bytes into an int number of bytes."""
    if isinstance(text, bool):
        raise ValueError("budget: expected a size such as '16GB' or '12GiB'")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(str(text))
        if not match:
            raise ValueError(f"budget: cannot read {text!r}; write a size such as '16GB' or '12GiB'")
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(f"budget: unknown unit {unit!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    size = value * _UNITS[unit]
    if not size > 0 or size > 2**60:
        raise ValueError(f"budget: must be between 1 byte and 1 EiB, got {text!r}")
    return int(size)


def format_bytes(n: int) -> str:
    """'14.23 GB (13.25 GiB)': both units, labelled."""
    return f"{n / GB:,.2f} GB ({n / GiB:,.2f} GiB)"
