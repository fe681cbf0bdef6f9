"""Figures: one look for every chart, titles that carry the whole scenario, and the
downloads under each chart (PNG and SVG drawn by kaleido, the data as CSV).

kaleido draws a figure with a headless Chromium. Starting one per export took 2-9 s, so
the first page with a chart starts kaleido's server in the background (one Chromium kept
for the app's lifetime, closed when the app stops) and exports reuse it: a fraction of a
second each. Its server takes one figure at a time, so exports queue on a lock.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import math
import re
import shutil
import textwrap
import threading
import warnings

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

import capacity as cap
from ui._format import SUMMARY_CHARS, html_text

EXPORT_SIZE = {"width": 1100, "height": 650, "scale": 2}    # pixels of exported files
PLOTLY_CONFIG = {
    "displaylogo": False,
    # The toolbar's camera button saves a PNG at the export size.
    "toImageButtonOptions": {"format": "png", **EXPORT_SIZE},
}
TITLE_WIDTH = 95          # characters per line of a figure's title (a long config name wraps)
WARM_DELAY_S = 8.0        # start kaleido this long after the first chart, not while the page renders

# The app's look, set once: naming a template per figure copies it each time (tens of ms).
pio.templates.default = "plotly_white"

# One colour per memory term on every chart (Plotly's default palette, in TERMS order).
TERM_COLOURS = dict(zip(cap.TERMS, ("#636efa", "#ab63fa", "#ef553b", "#00cc96", "#ffa15a", "#19d3f3", "#b6e880")))
# The terms of a sharded run (capacity/sharding.py): a gathered copy in a lighter shade of
# what it copies, the collectives' buffers in colours of their own.
TERM_COLOURS.update(weights_unsharded="#a9aefc", gradients_unsharded="#f5a59b", gradient_buckets="#ff6692",
                    all_gather_buffers="#ff97ff", reduce_scatter_buffers="#fecb52")

# Ticks of a logarithmic axis: 1, 2, 5, 10, 20, 50, ... (Plotly shows those in range).
LOG_TICKS = [m * 10**e for e in range(-3, 8) for m in (1, 2, 5)]


def axis_scale(log: bool) -> dict:
    """Plotly axis settings: logarithmic with 1-2-5 ticks, or linear."""
    return {"type": "log", "tickvals": LOG_TICKS, "tickformat": "~g"} if log else {"type": "linear"}


def round_ticks(top: float, count: int = 5) -> dict:
    """Linear axis settings from 0 to a round number at or above `top`, with round steps
    (1, 2, 2.5 or 5 times a power of ten): for a ratio axis that would otherwise tick at
    0.01, 0.07, 0.12."""
    if not top > 0 or not math.isfinite(top):
        top = 1.0
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    end = step * math.ceil(top / step - 1e-9)
    return {"range": [0, end], "tick0": 0, "dtick": step, "tickformat": "~g"}


def figure(traces: list[dict], layout: dict, title: str, subtitle: str = "", top_extra: int = 0) -> go.Figure:
    """A figure in the app's look, built in one go from plain trace and layout dicts (Plotly
    checks them once; adding traces and updating axes one by one costs ten times more).
    The title names the figure and the subtitle its whole scenario, so that a figure pasted
    into a report says what it shows (both escaped: they may carry a config's own name)."""
    wrapped = _wrap(html_text(subtitle, SUMMARY_CHARS)) if subtitle else ""
    heading = "<br>".join(textwrap.wrap(html_text(title), TITLE_WIDTH, break_long_words=False,
                                        break_on_hyphens=False)) or " "
    lines = (wrapped.count("<br>") + 1 if wrapped else 0) + 1.4 * heading.count("<br>")
    base = {"title": {"text": heading, "x": 0.0, "xanchor": "left", "yanchor": "top", "y": 0.98,
                      "subtitle": {"text": wrapped, "font": {"size": 12, "color": "#555"}}},
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "traceorder": "normal"},
            "margin": {"t": int(100 + 17 * lines + top_extra), "l": 70, "r": 70, "b": 60}, "font": {"size": 13}}
    for key, value in layout.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) and isinstance(value, dict) else value
    return go.Figure(data=traces, layout=base)


def style(fig: go.Figure, title: str, subtitle: str = "") -> go.Figure:
    """The app's look on a figure built elsewhere (see figure())."""
    layout = figure([], {}, title, subtitle).layout
    fig.update_layout(title=layout.title, legend=layout.legend, margin=layout.margin, font=layout.font)
    return fig


def _wrap(text: str, width: int = 140) -> str:
    """Break a long subtitle at ' · ' separators into lines of about `width` characters."""
    lines, line = [], ""
    for part in text.split(" · "):
        if line and len(line) + len(part) + 3 > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} · {part}" if line else part
    return "<br>".join(lines + [line])


# --- exports ---------------------------------------------------------------------------

_EXPORT_LOCK = threading.Lock()     # kaleido's server draws one figure at a time
_STATE_LOCK = threading.Lock()
_SERVER = {"state": "off"}           # off, starting, on, failed


@functools.lru_cache(maxsize=1)
def export_available() -> bool:
    """kaleido draws PNG/SVG files with Chromium; without it only the toolbar works."""
    if importlib.util.find_spec("kaleido") is None:       # found, not imported (0.1 s on a first page)
        return False
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def warm_exporter() -> None:
    """Start kaleido's server a moment from now, in the background, once per process."""
    with _STATE_LOCK:
        if _SERVER["state"] != "off" or not export_available():
            return
        _SERVER["state"] = "starting"
    timer = threading.Timer(WARM_DELAY_S, _start_server)
    timer.daemon = True
    timer.start()


def _start_server() -> None:
    import kaleido
    with _EXPORT_LOCK:
        try:
            kaleido.start_sync_server(silence_warnings=True)
            atexit.register(_stop_server)
            _to_image(go.Figure(go.Bar(x=[0], y=[1])), "svg")        # the first figure opens the page
            _SERVER["state"] = "on"
        except Exception:  # noqa: BLE001 - exports then start their own Chromium each time
            _SERVER["state"] = "failed"


STOP_WAIT_S = 5.0


def _stop_server() -> None:
    """At exit: ask kaleido's server to close its Chromium and wait a bounded time.
    kaleido's own exit hook joins its server thread without a timeout, and that thread logs
    as it closes: a test process was seen waiting forever at exit on the logging module's
    lock (py-spy: the server thread in Logger.isEnabledFor, the main thread in the join).
    This hook runs first (atexit is last in, first out) and marks the server closed, so
    kaleido's then returns at once; the thread is a daemon and goes with the process."""
    import kaleido._sync_server as server_module
    server = server_module.GlobalKaleidoServer()
    if not server.is_running():
        return
    server._task_queue.put(None)                 # the server's own "close" message
    server._thread.join(STOP_WAIT_S)
    server._initialized = False


def _to_image(fig: go.Figure, fmt: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "kopts is ignored if using a server"
        return fig.to_image(format=fmt, **EXPORT_SIZE)


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """The figure as a PNG or SVG file, drawn by kaleido."""
    with _EXPORT_LOCK:
        return _to_image(fig, fmt)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:120]


def show_figure(fig: go.Figure, name: str, data: pd.DataFrame) -> None:
    """The chart, then downloads: PNG and SVG (drawn on click) and its data as CSV."""
    # theme=None: the figure's own look (the one exported), without Streamlit's theme pass
    # over it in the browser (a page load's cost).
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=f"chart-{name}", theme=None)
    png, svg, csv = st.columns(3)
    ok = export_available()
    name = slug(name)
    png.download_button("Download PNG", data=functools.partial(figure_bytes, fig, "png"),
                        file_name=f"{name}.png", mime="image/png", on_click="ignore",
                        disabled=not ok, key=f"png-{name}", width="stretch")
    svg.download_button("Download SVG", data=functools.partial(figure_bytes, fig, "svg"),
                        file_name=f"{name}.svg", mime="image/svg+xml", on_click="ignore",
                        disabled=not ok, key=f"svg-{name}", width="stretch")
    csv.download_button("Download data (CSV)", data=csv_on_click(data),
                        file_name=f"{name}.csv", mime="text/csv", on_click="ignore",
                        key=f"csv-{name}", width="stretch")
    if ok:
        warm_exporter()
    else:
        st.caption("PNG/SVG files need Chromium for kaleido, which is not installed here; "
                   "the chart's camera button still saves a PNG.")


def _csv(data: pd.DataFrame) -> bytes:
    return data.to_csv(index=False).encode()


def csv_on_click(data: pd.DataFrame):
    """A download button's data: `data` as CSV, written when the button is clicked (not on
    every run of the page)."""
    return functools.partial(_csv, data)
