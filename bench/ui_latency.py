"""Re-render time of the app per interaction, page by page (target: under 1 s).

    python bench/ui_latency.py [--repeat N]

Each page is opened once (imports warm up, as in a running server), then each interaction
(a widget change followed by the script's rerun) is timed with Streamlit's AppTest, which
runs the same script the server runs. Every interaction sets a value not seen before, so
that nothing comes from a cache (the inverse questions are cached per process, as in the
server: a value seen before is cheaper). Prints a table and exits 1 if any median is over
the target.

Some answers (What fits: the P_MeZO/P_BP curve, dozens of searches) are computed in a
background thread while the page shows a progress bar; the column "complete" is the time
until they are drawn (polled every POLL_S), reported beside the re-render time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

TARGET_S = 1.0
RUN_TIMEOUT_S = 120
POLL_S = 0.2

# (page, widget kind, widget key, values: one per timed interaction, all new to the page)
BATCHES = (3, 5, 6, 7, 9, 10, 11, 12)
INTERACTIONS = [
    ("calculator", "number_input", "w_batch", BATCHES),
    ("calculator", "slider", "w_keep", (0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8)),
    ("calculator", "selectbox", "w_model", ("opt-13b", "opt-1.3b", "gpt2", "qwen2-7b", "mistral-7b", "phi-2",
                                            "pythia-1b", "gemma-2b")),
    ("memory_vs_context", "number_input", "w_batch", BATCHES),
    ("memory_vs_context", "number_input", "w_ctx_max", (4096, 16384, 2048, 32768, 1024, 12000, 6000, 3000)),
    ("what_fits", "number_input", "w_batch", BATCHES),
    ("what_fits", "number_input", "w_budget_gb", (24.0, 10.0, 30.0, 50.0, 70.0, 90.0, 110.0, 130.0)),
    ("what_fits", "selectbox", "w_device", ("A100 80GB", "Phone 8GB", "RTX 4090 24GB", "H200 141GB",
                                            "Jetson Orin Nano 8GB", "Apple unified 64GB", "A100 40GB", "Phone 12GB")),
    ("time_tradeoff", "number_input", "w_mult", (16.0, 8.0, 4.0, 2.0, 64.0, 100.0, 10.0, 20.0)),
    ("time_tradeoff", "number_input", "w_batch", BATCHES),
    ("validate", "number_input", "w_batch", BATCHES),
]


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_TIMEOUT_S)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    if at.exception:
        raise SystemExit(f"{page}: {at.exception[0].message}")
    return at


def time_interaction(at: AppTest, kind: str, key: str, values, repeat: int) -> tuple[list[float], list[float]]:
    """(re-render seconds, seconds until background work is drawn) per interaction."""
    rerender, complete = [], []
    for i in range(repeat):
        widget = getattr(at, kind)(key=key)
        widget.set_value(values[i])
        start = time.perf_counter()
        at.run()
        rerender.append(time.perf_counter() - start)
        while at.get("progress"):
            time.sleep(POLL_S)
            at.run()
        complete.append(time.perf_counter() - start)
        if at.exception:
            raise SystemExit(f"{key}: {at.exception[0].message}")
    return rerender, complete


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, choices=range(1, len(BATCHES) + 1), metavar="N",
                        help=f"interactions timed per control, 1 to {len(BATCHES)} (default 5)")
    args = parser.parse_args()

    print(f"{'page':<20}{'control':<16}{'first open [s]':>16}{'median [s]':>12}{'max [s]':>10}"
          f"{'complete [s]':>14}  target {TARGET_S:g} s")
    worst = 0.0
    opened: dict[str, float] = {}
    for page, kind, key, values in INTERACTIONS:
        start = time.perf_counter()
        at = open_page(page)
        opened.setdefault(page, time.perf_counter() - start)
        seconds, complete = time_interaction(at, kind, key, values, args.repeat)
        median = statistics.median(seconds)
        worst = max(worst, median)
        flag = "" if median < TARGET_S else "  OVER"
        print(f"{page:<20}{key:<16}{opened[page]:>16.2f}{median:>12.3f}{max(seconds):>10.3f}"
              f"{statistics.median(complete):>14.3f}{flag}")
    print(f"slowest median: {worst:.3f} s ({'within' if worst < TARGET_S else 'over'} the {TARGET_S:g} s target)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
