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

EiB = 2**60
MAX_BYTES = EiB   # the largest size parse_bytes accepts (a budget beyond any machine)

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": MB, "gb": GB, "tb": 10**12, "pb": 10**15, "eb": 10**18,
    "kib": 2**10, "mib": MiB, "gib": GiB, "tib": 2**40, "pib": 2**50, "eib": EiB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, what: str = "budget", require_unit: bool = False) -> int:
    """Parse '16GB', '16 GiB', '8e9' or a number of bytes into an int number of bytes,
    from 1 byte to 1 EiB (MAX_BYTES) inclusive. `what` names the quantity in messages.
    require_unit: refuse a bare number such as '8' (a person who types 8 means GB or GiB,
    not 8 bytes); the message says how to write it."""
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a size such as '16GB' or '12GiB'")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(str(text))
        if not match:
            raise ValueError(f"{what}: cannot read {_short(text)}; write a size such as '16GB' or '12GiB'")
        value, unit = float(match.group(1)), match.group(2).lower()
        if require_unit and not unit:
            number = match.group(1)
            raise ValueError(f"{what}: {_short(text)} has no unit; write {number}GB (10^9 bytes), "
                             f"{number}GiB (2^30 bytes) or {number}B (bytes)")
    if unit not in _UNITS:
        raise ValueError(f"{what}: unknown unit {unit!r}; use B, KB, MB, GB, TB, PB, EB, KiB, MiB, GiB, "
                         "TiB, PiB or EiB")
    size = value * _UNITS[unit]
    if not size >= 1 or size > MAX_BYTES:
        raise ValueError(f"{what}: must be between 1 byte and 1 EiB (2^60 bytes), got {_short(text)}")
    return int(size)


def _short(text) -> str:
    """A user's text for a message: quoted, and cut when long."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def format_bytes(n: int, scale: int | None = None) -> str:
    """'14.23 GB (13.25 GiB)': both units, labelled. Below 0.1 GB (judged on `scale`, n by
    default: pass a report's largest figure so all its lines share one unit) in MB and MiB,
    so a small model's figures do not all read 0.00 GB."""
    if (n if scale is None else scale) < GB // 10:
        return f"{n / MB:,.2f} MB ({n / MiB:,.2f} MiB)"
    return f"{n / GB:,.2f} GB ({n / GiB:,.2f} GiB)"
