"""The app's latency as a person meets it, timed in headless Chromium.

    python bench/ui_latency.py [--repeat N] [--no-validation] [--out FILE.json]

Targets (issue 12): every page load and interaction under 1 s on this machine, except
exports and runs; an export under 2 s; a validation step from the app within 1.5x of a
plain training step of the same model.

Everything is timed in a real browser (Playwright driving /usr/bin/chromium) against
`streamlit run app.py` on localhost, from the action (a browser reload of a page, a page
opened from the sidebar, a number typed and Enter, a download clicked) until the page is
still: the script has finished its run (the address bar carries
the change, Streamlit's running icon and stale elements are gone), background work has
landed (no progress bar) and the chart is drawn. Each figure is also given as a ratio
against a trivial Streamlit page (a title and one number box) served and timed the same
way in the same run, so that runs on a loaded machine can be compared: the ratio is what
the app adds over Streamlit itself.

The validation step: the Validate page runs GPT-2 (batch 1, context 128, AdamW, bf16, the
plain loop, the CPU) and the engine reports each step's seconds; the plain step is the same model and
settings in a bare PyTorch loop (forward, backward, optimizer step) in a child process of
this script, run before and after the app's run, in the environment the app gives the
engine (OpenMP's idle threads asleep: capacity/validation/host.py, ENGINE_THREADS_ENV). Both take the fastest of the steps after
the first: on a machine shared with other work a step's time swings several-fold with the
others' load, and the fastest step is the one least disturbed.

Page reloads are also traced once more each (Chromium tracing, not timed) for the CPU time
of the renderer's main thread, the browser's work to draw the page: on a busy machine that
figure moves less than the wall time, which includes waiting for the CPU.

Prints a table and exits 1 if any figure is over its target.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from capacity.validation.host import engine_environment  # noqa: E402
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 90
WAIT_MS = 180_000                 # the longest any one wait may take before the bench gives up
VIEWPORT = {"width": 1400, "height": 1000}
INTERACTION_S, EXPORT_S, STEP_RATIO = 1.0, 2.0, 1.5

TRIVIAL_APP = textwrap.dedent('''
    import streamlit as st
    st.title("Trivial page")
    n = st.number_input("Batch size", min_value=1, value=8)
    st.query_params["batch"] = str(n)
    st.write(f"Batch {n}")
''')

# What "still" means, read in the page: no script run in progress, nothing stale, no
# background progress bar.
STILL = """() => !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')
    && !document.querySelector('[data-stale="true"]')
    && !document.querySelector('[data-testid="stSkeleton"]')
    && !document.querySelector('[data-testid="stProgress"]')
    && document.querySelector('h1') !== null"""
CHART = "() => document.querySelector('.js-plotly-plot .main-svg') !== null"

PLAIN_STEP = textwrap.dedent('''
    import json, statistics, sys, time, torch
    sys.path.insert(0, {root!r})
    from capacity.presets import preset_config
    from capacity.validation.models import build_model
    cfg = preset_config("gpt2")
    torch.manual_seed(0)
    model = build_model(cfg, "bf16", "sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, cfg["vocab_size"], (1, 128))
    seconds = []
    for _ in range({steps}):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))
''')


# --- servers ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run SCRIPT` on a free localhost port, in its own process group."""

    def __init__(self, script: Path, cwd: Path):
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ui-latency-", suffix=".log", delete=False)
        # A run history of its own: the shared one (~/.cache/capacity) already shows a "Latest
        # run", which the validation step would read before its own run has ended.
        self.history = Path(tempfile.mkdtemp(prefix="ui-latency-")) / "validation-runs.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(self.port),
             "--server.headless", "true", "--server.address", "localhost", "--browser.gatherUsageStats", "false"],
            cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, CAPACITY_APP_HISTORY=str(self.history)))
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"streamlit exited early: {Path(self.log.name).read_text()[-2000:]}")
                time.sleep(0.2)
        self.stop()
        raise SystemExit("streamlit did not answer its health check in time")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- timing in the browser ------------------------------------------------------------

def still(page, chart: bool = False, url_part: str | None = None) -> None:
    if url_part:
        page.wait_for_function("part => window.location.href.includes(part)", arg=url_part, timeout=WAIT_MS)
    page.wait_for_function(STILL, timeout=WAIT_MS, polling=20)
    if chart:
        page.wait_for_function(CHART, timeout=WAIT_MS, polling=20)
    page.wait_for_function(STILL, timeout=WAIT_MS, polling=20)


def load(page, url: str, chart: bool) -> float:
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]', timeout=WAIT_MS)
    # the script's first run has begun once the main block has any element
    page.wait_for_function("() => document.querySelector('h1') !== null", timeout=WAIT_MS, polling=20)
    still(page, chart)
    return time.perf_counter() - start


def main_thread_cpu_seconds(trace: dict) -> float:
    """CPU seconds of the renderer's main thread in a Chromium trace: the thread time (tdur)
    of its top-level tasks (nested tasks are inside their parent's). Less sensitive to other
    work on the machine than wall time (a busy machine delays the renderer more than it
    lengthens its work)."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    mains = {key for key, name in names.items() if name == "CrRendererMain"}
    tasks = sorted((e for e in events if (e.get("pid"), e.get("tid")) in mains and e.get("ph") == "X"
                    and e.get("name") in ("ThreadControllerImpl::RunTask", "RunTask") and "tdur" in e),
                   key=lambda e: e["ts"])
    total, end = 0, -1
    for e in tasks:
        if e["ts"] >= end:
            total, end = total + e["tdur"], e["ts"] + e["dur"]
    return total / 1e6


def load_cpu(browser, page, url: str, chart: bool) -> float:
    """A reload's renderer main-thread CPU seconds (traced; the wall time is measured apart,
    without tracing)."""
    browser.start_tracing(page=page, categories=["toplevel", "devtools.timeline"])
    load(page, url, chart)
    return main_thread_cpu_seconds(json.loads(browser.stop_tracing()))


def switch(page, link: str, title: str, chart: bool) -> float:
    """A page opened from the sidebar's navigation (same session, no reload)."""
    start = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"]').get_by_text(link, exact=True).click()
    page.get_by_role("heading", name=title).wait_for(timeout=WAIT_MS)
    still(page, chart)
    return time.perf_counter() - start


def type_number(page, label: str, value, url_part: str, chart: bool) -> float:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    start = time.perf_counter()
    box.press("Enter")
    still(page, chart, url_part)
    return time.perf_counter() - start


def download(page, button: str) -> float:
    start = time.perf_counter()
    with page.expect_download(timeout=WAIT_MS) as info:
        page.get_by_role("button", name=button).first.click()
    info.value.path()
    return time.perf_counter() - start


# --- the bench ------------------------------------------------------------------------

PAGES = [("", "calculator", True), ("memory_vs_context", "memory vs context", True),
         ("what_fits", "what fits", True), ("time_tradeoff", "time trade-off", True),
         ("validate", "validate", False)]
# (sidebar link, page title, has a chart): switched to in this order, round and round
NAVIGATION = [("Memory vs context", "Memory vs context length", True), ("What fits", "What fits a device", True),
              ("Time trade-off", "Time trade-off", True), ("Validate", "Validate on this machine", False),
              ("Calculator", "Memory calculator", True)]
# (page path, label, new values; each value is new to the page so that nothing is cached)
INTERACTIONS = [
    ("", "Batch size", (3, 5, 6, 7, 9, 10, 11)),
    ("", "Context length (tokens per example)", (256, 384, 640, 768, 896, 1000, 1100)),
    ("memory_vs_context", "Batch size", (3, 5, 6, 7, 9, 10, 11)),
    ("memory_vs_context", "Longest context shown (tokens)", (4096, 16384, 2048, 32768, 1024, 12000, 6000)),
    ("what_fits", "Batch size", (3, 5, 6, 7, 9, 10, 11)),
    ("what_fits", "Budget [GB = 10⁹ bytes]", (24.0, 10.0, 30.0, 50.0, 70.0, 90.0, 110.0)),
    ("time_tradeoff", "MeZO steps per BP step", (16.0, 8.0, 4.0, 2.0, 64.0, 100.0, 10.0)),
    ("time_tradeoff", "Batch size", (3, 5, 6, 7, 9, 10, 11)),
    ("validate", "Batch size", (3, 5, 6, 7, 9, 10, 11)),
]
EXPORTS = [("", "Download PNG"), ("", "Download SVG"), ("memory_vs_context", "Download SVG")]


def url_value(value) -> str:
    return str(float(value)) if isinstance(value, float) else str(value)


def measure_trivial(browser, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "trivial.py"
        script.write_text(TRIVIAL_APP)
        server = Server(script, Path(folder))
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            first = load(page, server.url, chart=False)
            loads = [load(page, server.url, chart=False) for _ in range(repeat)]
            typed = [type_number(page, "Batch size", 10 + i, f"batch={10 + i}", chart=False) for i in range(repeat)]
            cpu = [load_cpu(browser, page, server.url, chart=False) for _ in range(repeat)]
            page.context.close()
        finally:
            server.stop()
    return {"first load": first, "load": statistics.median(loads), "interaction": statistics.median(typed),
            "load cpu": statistics.median(cpu)}


def plain_step_seconds(steps: int) -> float:
    code = PLAIN_STEP.format(root=str(ROOT), steps=steps)
    # The environment the app gives the engine (host.ENGINE_THREADS_ENV), so both steps run alike.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=engine_environment(dict(os.environ)))
    if done.returncode:
        raise SystemExit(f"the plain step failed: {done.stderr[-1000:]}")
    return min(json.loads(done.stdout.strip().splitlines()[-1])[1:])


def validation_step_seconds(page, url: str, steps: int) -> float:
    load(page, f"{url}/validate?model=gpt2&batch=1&seq=128&loop=plain&v_method=bp&v_device=cpu&v_steps={steps}"
               f"&v_limit=900", chart=False)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Latest run").wait_for(timeout=WAIT_MS * 5)
    still(page)
    with page.expect_download(timeout=WAIT_MS) as info:
        page.get_by_role("button", name="Download the runs with full results (JSON)").click()
    runs = json.loads(Path(info.value.path()).read_text())
    result = runs[-1].get("result") or {}
    seconds = result.get("step_seconds") or []
    if len(seconds) < 2:
        raise SystemExit(f"the validation run gave no step times: {runs[-1].get('status')} {runs[-1].get('message')}")
    return min(seconds[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 8), metavar="N",
                        help="timings per item, 1 to 7 (the median is reported; default 3)")
    parser.add_argument("--no-validation", action="store_true", help="skip the validation step (a real CPU run)")
    parser.add_argument("--validation-only", action="store_true", help="time only the validation step")
    parser.add_argument("--steps", type=int, default=6, help="steps of the validation run and the plain loop")
    parser.add_argument("--out", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows: list[tuple[str, float, float, float]] = []     # (what, seconds, trivial seconds, target)
    cpu_rows: list[tuple[str, float]] = []                # (page, renderer main-thread CPU s per reload)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        trivial = measure_trivial(browser, args.repeat)
        server = Server(ROOT / "app.py", ROOT)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            if args.validation_only:
                for items in (INTERACTIONS, EXPORTS, PAGES, NAVIGATION):
                    items.clear()
            # The first request of a fresh server is a deep link (Streamlit runs the page file
            # before app.py has declared the pages; the app reroutes it).
            rows.append(("first render of a deep link, fresh server",
                         load(page, f"{server.url}/memory_vs_context?model=opt-1.3b&batch=2&seq=1024", chart=True),
                         trivial["first load"], INTERACTION_S))
            for path, label, chart in PAGES:
                seconds = [load(page, f"{server.url}/{path}", chart) for _ in range(args.repeat)]
                rows.append((f"page load (browser reload): {label}", statistics.median(seconds), trivial["load"],
                             INTERACTION_S))
                cpu_rows.append((label, statistics.median(load_cpu(browser, page, f"{server.url}/{path}", chart)
                                                          for _ in range(args.repeat))))
            load(page, server.url, chart=True)
            switched: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                for link, title, chart in NAVIGATION:
                    switched.setdefault(link, []).append(switch(page, link, title, chart))
            for link, seconds in switched.items():
                rows.append((f"page switch (sidebar): {link}", statistics.median(seconds), trivial["interaction"],
                             INTERACTION_S))
            for path, label, values in INTERACTIONS:
                chart = path != "validate"
                load(page, f"{server.url}/{path}", chart)
                seconds = []
                for value in values[:args.repeat]:
                    key = {"Batch size": "batch", "Context length (tokens per example)": "seq",
                           "Longest context shown (tokens)": "ctx_max", "Budget [GB = 10⁹ bytes]": "budget_gb",
                           "MeZO steps per BP step": "mult"}[label]
                    seconds.append(type_number(page, label, value, f"{key}={url_value(value)}", chart))
                rows.append((f"{path or 'calculator'}: {label}", statistics.median(seconds), trivial["interaction"],
                             INTERACTION_S))
            for path, button in EXPORTS:
                load(page, f"{server.url}/{path}", chart=True)
                seconds = [download(page, button) for _ in range(args.repeat)]
                rows.append((f"export: {path or 'calculator'} {button.split()[-1]}", statistics.median(seconds),
                             trivial["interaction"], EXPORT_S))
            if not args.no_validation:
                plain_before = plain_step_seconds(args.steps)
                step = validation_step_seconds(page, server.url, args.steps)
                plain = min(plain_before, plain_step_seconds(args.steps))
                rows.append(("validation step from the app (GPT-2, CPU) vs a plain step", step, plain,
                             STEP_RATIO * plain))
        finally:
            server.stop()
            browser.close()

    print(f"trivial Streamlit page: first load {trivial['first load']:.2f} s, load {trivial['load']:.2f} s, "
          f"interaction {trivial['interaction']:.2f} s")
    print(f"{'what':<58}{'seconds':>9}{'reference':>11}{'ratio':>8}{'target s':>10}")
    over = 0
    for what, seconds, reference, target in rows:
        flag = "" if seconds <= target else "  OVER"
        over += bool(flag)
        print(f"{what:<58}{seconds:>9.2f}{reference:>11.2f}{seconds / reference:>8.2f}{target:>10.2f}{flag}")
    print(f"{len(rows) - over}/{len(rows)} within target")
    if cpu_rows:
        print(f"\nrenderer main-thread CPU per reload (traced; steadier than wall time on a busy machine), "
              f"trivial page {trivial['load cpu']:.3f} s:")
        for label, cpu in cpu_rows:
            print(f"  {label:<20}{cpu:>7.3f} s{cpu / trivial['load cpu']:>7.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"trivial": trivial, "rows": [
            {"what": w, "seconds": s, "reference_seconds": r, "ratio": s / r, "target_seconds": t}
            for w, s, r, t in rows], "reload_cpu_seconds": dict(cpu_rows)}, indent=1))
    return 0 if not over else 1


if __name__ == "__main__":
    sys.exit(main())
