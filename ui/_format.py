"""How numbers and user text are shown: units, deltas, tables, and text made safe.

Bytes come from `capacity`; here they become labelled display units (GB = 10^9 bytes and
GiB = 2^30 bytes, both shown; MB and MiB for small models, so that they do not round to
0.00 GB). Text a user controls (a link parameter, an upload's file name or config name, an
error message quoting either) is never rendered as Markdown or HTML: `md()` makes it
literal for Streamlit's Markdown (captions, alerts, labels) and `html_text()` for Plotly's
titles; tables and st.text/st.code show it as it is.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd
import streamlit as st

import capacity as cap

# --- user text ------------------------------------------------------------------------

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")     # every ASCII punctuation character
MAX_SHOWN_CHARS = 300
SUMMARY_CHARS = 1000          # a whole scenario in one line (ui/_scenario.summary) is longer


def md(text, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` as literal Markdown: every ASCII punctuation character backslash-escaped
    (CommonMark lets any of them be escaped, so no link, image, code span, emphasis, colour
    directive, math or HTML tag can form), line breaks as spaces, at most `limit` characters.
    A colon is also followed by a zero-width space, so that no emoji or icon shortcode
    (':material/...:') forms either."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text).replace(":", ":\u200b")


def html_text(text, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` for a Plotly title or label: Plotly reads a subset of HTML there (<a href>,
    <b>, <br>), so <, > and & are escaped; at most `limit` characters."""
    text = " ".join(str(text).split())
    return html.escape(text[:limit], quote=False)


def plain(text, limit: int = 80) -> str:
    """A short single-line label from user text (a config's name): printable characters
    only, at most `limit` of them."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- units ----------------------------------------------------------------------------

UNITS = {"GB": (cap.GB, "GiB", cap.GiB), "MB": (10**6, "MiB", 2**20)}
AXIS_TITLES = {"GB": "memory [GB = 10⁹ bytes]", "MB": "memory [MB = 10⁶ bytes]"}
GB_AXIS = AXIS_TITLES["GB"]
SMALL_BYTES = 10**8           # below 0.1 GB, use MB


def unit_for(n: int | float | None) -> str:
    """"GB", or "MB" when the largest number to show is under 0.1 GB."""
    return "MB" if n is not None and n < SMALL_BYTES else "GB"


def size_text(n: int | float | None, unit: str | None = None) -> str:
    """'14.15 GB' (or '481.49 MB' for small numbers)."""
    if n is None:
        return "n/a"
    unit = unit or unit_for(n)
    return f"{n / UNITS[unit][0]:,.2f} {unit}"


def binary_text(n: int | float | None, unit: str | None = None) -> str:
    """'13.18 GiB' (or MiB): the binary twin of size_text."""
    if n is None:
        return "n/a"
    _, name, size = UNITS[unit or unit_for(n)]
    return f"{n / size:,.2f} {name}"


def gb_text(n: int | float | None) -> str:
    return size_text(n, "GB")


def both_text(n: int | float | None) -> str:
    """'17.00 GB (15.83 GiB)', or MB and MiB for small numbers."""
    return "n/a" if n is None else f"{size_text(n)} ({binary_text(n)})"


def pct_text(x: float | None) -> str:
    """'+1.23 %'; a value that rounds to zero is '0.00 %', never '-0.00 %'."""
    if x is None or not math.isfinite(x):
        return "n/a"
    x = round(x, 2) or 0.0
    return f"{x:+.2f} %" if x else "0.00 %"


def fit_delta(need: int, budget: int) -> dict:
    """st.metric's delta arguments: 'fits, 3.10 GB free' in green or '2.00 GB over budget'
    in red, without an arrow (the words say which way)."""
    if need <= budget:
        return {"delta": f"fits, {size_text(budget - need, unit_for(max(need, budget)))} free",
                "delta_color": "green", "delta_arrow": "off"}
    return {"delta": f"{size_text(need - budget, unit_for(max(need, budget)))} over budget",
            "delta_color": "red", "delta_arrow": "off"}


def times_text(x: float) -> str:
    """A P_MeZO/P_BP ratio: '6.33', or '∞ (BP fits nothing)'."""
    return "∞ (BP fits nothing)" if math.isinf(x) else f"{x:.2f}"


def params_text(n: int) -> str:
    """'6.74 B' (parameters, short scale); 'none fits' for 0."""
    if not n:
        return "none fits"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n}"


def finite(values: pd.Series) -> pd.Series:
    """Infinite values become gaps in a chart."""
    return values.where(values.map(math.isfinite))


def ratio(a: int | float, b: int | float) -> float:
    """a / b of two capacity figures (NaN when b is 0)."""
    return a / b if b else float("nan")


def ratio_text(a: int | float, b: int | float) -> str:
    return f"{ratio(a, b):.3f}" if b else "n/a"


def term_label(term: str) -> str:
    return term.replace("_", " ")


# Under a PEFT method the weights split: the frozen base, and what trains (with its
# gradients and optimizer states).
PEFT_TERM_LABELS = {"weights": "base weights (frozen)", "trainable_weights": "trainable weights",
                    "gradients": "gradients (trainable weights)", "optimizer_states": "optimizer states (trainable weights)"}


def peft_term_label(term: str) -> str:
    return PEFT_TERM_LABELS.get(term, term_label(term))


# --- tables ---------------------------------------------------------------------------

def size_columns(label: str, n: int | float, unit: str = "GB") -> dict:
    """Two labelled columns in `unit` and its binary twin, e.g. 'x [MB]' and 'x [MiB]'."""
    size, binary, binary_size = UNITS[unit]
    return {f"{label} [{unit}]": n / size, f"{label} [{binary}]": n / binary_size}


def gb_columns(label: str, n: int | float) -> dict:
    """Two labelled columns: bytes in GB (10^9) and in GiB (2^30)."""
    return size_columns(label, n, "GB")


def terms_table(breakdowns: dict, terms, totals: dict, unit: str = "GB", name_of=term_label) -> pd.DataFrame:
    """Rows: the terms and the total; two columns per method (GB and GiB, or MB and MiB)."""
    rows = {}
    for term in list(terms) + ["total"]:
        row = {}
        for label, breakdown in breakdowns.items():
            n = totals[label] if term == "total" else breakdown.get(term, 0)
            row.update(size_columns(label, n, unit))
        rows["total (peak)" if term == "total" else name_of(term)] = row
    return pd.DataFrame.from_dict(rows, orient="index").round(3)


ROW_PX = 35                   # st.dataframe's row height


def unit_name(unit: str = "GB", binary: bool = False) -> str:
    """The unit a table shows: `unit` (GB, MB) or its binary twin (GiB, MiB)."""
    return UNITS[unit][1] if binary else unit


def unit_choice_text(unit: str, binary: bool) -> str:
    """'GB (10⁹ bytes)', 'GiB (2³⁰ bytes)', 'MB (10⁶ bytes)' or 'MiB (2²⁰ bytes)'."""
    size = {"GB": "10⁹", "GiB": "2³⁰", "MB": "10⁶", "MiB": "2²⁰"}
    name = unit_name(unit, binary)
    return f"{name} ({size[name]} bytes)"


def unit_table(table: pd.DataFrame, unit: str = "GB", binary: bool = False) -> None:
    """A table with '[GB]' and '[GiB]' columns (or MB and MiB), drawn in one of the two
    units: the page's units control chooses (one table drawn, not one per unit)."""
    name = unit_name(unit, binary)
    # tall enough for every row (a sharded run has a dozen terms): no scrolling inside
    st.dataframe(table[[c for c in table.columns if c.endswith(f"[{name}]")]], width="stretch",
                 height=ROW_PX * (len(table) + 1) + 3)
