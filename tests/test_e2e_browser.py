"""End to end: `streamlit run app.py` on localhost, driven by Playwright in Debian's headless
Chromium. Opens every page, changes a control, checks that a Plotly chart is drawn and that
the URL carries the change, and saves screenshots to screenshots/ (gitignored)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 30_000
BACKGROUND_TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1400, "height": 1000}
SHOT_MAX_HEIGHT = 6000          # pixels

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium is absent (Debian: apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "localhost"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://localhost:{port}"
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early:\n{proc.stdout.read()}")
            time.sleep(0.3)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("streamlit did not answer its health check in time")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(PAGE_TIMEOUT_MS)
    yield pg
    context.close()


def settle(pg) -> None:
    """Wait until the script has finished its run and the page is still."""
    pg.wait_for_selector('[data-testid="stApp"]')
    pg.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"] button')"
                         " && !document.querySelector('[data-testid=\"stSkeleton\"]')")
    # Background searches (What fits) show a progress bar until they land.
    pg.wait_for_function("() => !document.querySelector('[data-testid=\"stProgress\"]')",
                         timeout=BACKGROUND_TIMEOUT_MS)
    pg.wait_for_timeout(700)          # let Plotly finish drawing


def assert_no_traceback(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator('[data-testid="stException"]').first.inner_text()


def set_number(pg, label: str, value: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def screenshot(pg, name: str) -> None:
    """The whole page: Streamlit scrolls inside its own container, so grow the window."""
    height = pg.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    pg.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height + 100, SHOT_MAX_HEIGHT))})
    settle(pg)
    pg.screenshot(path=str(SHOTS / name), full_page=True)


def wait_for_url_part(pg, part: str) -> None:
    """Streamlit rewrites the address with history.replaceState, which Playwright's page.url
    does not follow at once: read location.href."""
    pg.wait_for_function("part => window.location.href.includes(part)", arg=part)


def chart_drawn(pg) -> None:
    pg.wait_for_selector(".js-plotly-plot .main-svg", state="visible")
    assert pg.locator(".js-plotly-plot").count() >= 1


def test_a_deep_link_on_a_fresh_server_reproduces_the_scenario(server, page):
    """First in this file, so that it is the server's first request: Streamlit then runs a
    pages/ file without app.py unless the app reroutes it (pages/_ui.py)."""
    page.goto(f"{server}/memory_vs_context?model=opt-1.3b&batch=2&seq=1024")
    settle(page)
    page.get_by_role("heading", name="Memory vs context length").wait_for()
    # (the number boxes settle a moment after the heading: expect() retries)
    sync_api.expect(page.get_by_label("Batch size", exact=True)).to_have_value("2")
    sync_api.expect(page.get_by_label("Context length (tokens per example)", exact=True)).to_have_value("1024")
    chart_drawn(page)
    assert "opt-1.3b, batch 2" in page.locator(".js-plotly-plot .gtitle").first.text_content()
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Time trade-off" in nav and "_ui" not in nav


PAGES = [
    # (url path, title, a page-specific change)
    ("", "Memory calculator", None),
    ("memory_vs_context", "Memory vs context length", ("toggle", "Logarithmic axes", "log=1")),
    ("what_fits", "What fits a device", None),
    ("time_tradeoff", "Time trade-off", ("number", "MeZO steps per BP step", "mult=16.0")),
]


@pytest.mark.parametrize("path,title,change", PAGES, ids=[p[0] or "calculator" for p in PAGES])
def test_page_draws_a_chart_and_follows_a_control(server, page, path, title, change):
    SHOTS.mkdir(exist_ok=True)
    page.goto(f"{server}/{path}")
    settle(page)
    page.get_by_role("heading", name=title).wait_for()
    chart_drawn(page)
    assert_no_traceback(page)

    set_number(page, "Batch size", "4")
    wait_for_url_part(page, "batch=4")
    if change:
        kind, label, in_url = change
        if kind == "toggle":
            page.get_by_text(label, exact=True).click()
        else:
            set_number(page, label, in_url.split("=")[1])
        wait_for_url_part(page, in_url)
    settle(page)
    chart_drawn(page)
    assert_no_traceback(page)
    screenshot(page, f"{path or 'calculator'}.png")


def test_chart_downloads_svg_and_csv(server, page):
    """The download buttons: SVG drawn by kaleido on click, CSV of the data behind the chart."""
    page.goto(server)
    settle(page)
    chart_drawn(page)
    with page.expect_download(timeout=60_000) as svg:
        page.get_by_role("button", name="Download SVG").first.click()
    assert svg.value.suggested_filename.endswith(".svg")
    assert b"<svg" in Path(svg.value.path()).read_bytes()[:500]
    with page.expect_download() as csv:
        page.get_by_role("button", name="Download data (CSV)").first.click()
    assert Path(csv.value.path()).read_text().startswith("method,term,bytes,")


def test_validate_page(server, page):
    SHOTS.mkdir(exist_ok=True)
    page.goto(f"{server}/validate?model=tiny-llama&batch=1&seq=32&v_steps=2")
    settle(page)
    page.get_by_role("heading", name="Validate on this machine").wait_for()
    assert_no_traceback(page)
    run = page.get_by_role("button", name="Run", exact=True)
    if run.is_disabled():
        assert page.get_by_text("validation engine is not available").count() == 1
    else:
        run.click()
        page.get_by_text("Latest run").wait_for(timeout=120_000)
        settle(page)
        assert_no_traceback(page)
        if page.get_by_text("The run failed").count() == 0:
            chart_drawn(page)
            assert page.get_by_text("This session's runs").count() == 1
    screenshot(page, "validate.png")
