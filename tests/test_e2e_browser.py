"""End to end: `streamlit run app.py` on localhost, driven by Playwright in Debian's headless
Chromium. Opens every page, changes a control, checks that a Plotly chart is drawn and that
the URL carries the change, downloads files, runs a tiny validation, tries hostile link
parameters and uploads, and saves screenshots to screenshots/ (gitignored).

Every wait is on a condition (the script's run finished, the address bar changed, the chart
drawn), never a fixed pause, with limits generous enough for a loaded machine: a busy
machine makes a test slower, not red."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 120
WAIT_MS = 240_000               # the limit of any one wait: a condition, reached far sooner
VIEWPORT = {"width": 1400, "height": 1000}
SHOT_MAX_HEIGHT = 6000          # pixels
STOP_LIMIT_S = 15               # the server stops this quickly, background work or not

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium is absent (Debian: apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

# The page is still: no script run in progress, nothing stale, no background progress bar.
STILL = """() => !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')
    && !document.querySelector('[data-stale="true"]')
    && !document.querySelector('[data-testid="stSkeleton"]')
    && !document.querySelector('[data-testid="stProgress"]')
    && document.querySelector('h1') !== null"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = dict(os.environ, CAPACITY_APP_HISTORY=str(log.parent / "runs.jsonl"))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    url = f"http://localhost:{port}"
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early:\n{log.read_text()}")
            time.sleep(0.3)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("streamlit did not answer its health check in time")
    yield {"url": url, "proc": proc, "log": log}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def settle(pg, url_part: str | None = None) -> None:
    """Wait until the script's run has finished (and, given url_part, until the address bar
    carries it: the app writes the URL at the end of each run)."""
    pg.wait_for_selector('[data-testid="stApp"]')
    if url_part:
        wait_for_url_part(pg, url_part)
    pg.wait_for_function(STILL, polling=50)


def assert_no_traceback(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator('[data-testid="stException"]').first.inner_text()


def set_number(pg, label: str, value: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def screenshot(pg, name: str) -> None:
    """The whole page: Streamlit scrolls inside its own container, so grow the window."""
    SHOTS.mkdir(exist_ok=True)
    height = pg.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    pg.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height + 100, SHOT_MAX_HEIGHT))})
    settle(pg)
    chart_drawn(pg, required=False)
    pg.screenshot(path=str(SHOTS / name), full_page=True)


def wait_for_url_part(pg, part: str) -> None:
    """Streamlit rewrites the address with history.replaceState, which Playwright's page.url
    does not follow at once: read location.href."""
    pg.wait_for_function("part => window.location.href.includes(part)", arg=part, polling=50)


def chart_drawn(pg, required: bool = True) -> None:
    """Wait until every chart on the page is drawn; required: until there is one (a page
    whose chart waits on background work draws it on a later run, after a progress bar)."""
    if not required and pg.locator(".js-plotly-plot").count() == 0:
        return
    pg.wait_for_function("() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];"
                         " return plots.length > 0 && plots.every(p => p.querySelector('.main-svg')); }",
                         polling=50)
    assert pg.locator(".js-plotly-plot").count() >= 1


def test_a_deep_link_on_a_fresh_server_reproduces_the_scenario(server, page):
    """First in this file, so that it is the server's first request."""
    page.goto(f"{server['url']}/memory_vs_context?model=opt-1.3b&batch=2&seq=1024")
    settle(page)
    page.get_by_role("heading", name="Memory vs context length").wait_for()
    sync_api.expect(page.get_by_label("Batch size", exact=True)).to_have_value("2")
    sync_api.expect(page.get_by_label("Context length (tokens per example)", exact=True)).to_have_value("1024")
    chart_drawn(page)
    assert "opt-1.3b" in page.locator(".js-plotly-plot .gtitle").first.text_content()
    assert "batch 2" in page.locator(".js-plotly-plot").first.text_content()
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Time trade-off" in nav and "_ui" not in nav and "_scenario" not in nav


PAGES = [
    # (url path, title, a page-specific change)
    ("", "Memory calculator", None),
    ("memory_vs_context", "Memory vs context length", ("toggle", "Logarithmic axes", "log=0")),
    ("what_fits", "What fits a device", None),
    ("time_tradeoff", "Time trade-off", ("number", "MeZO steps per BP step", "mult=16.0")),
]


@pytest.mark.parametrize("path,title,change", PAGES, ids=[p[0] or "calculator" for p in PAGES])
def test_page_draws_a_chart_and_follows_a_control(server, page, path, title, change):
    page.goto(f"{server['url']}/{path}")
    settle(page)
    page.get_by_role("heading", name=title).wait_for()
    chart_drawn(page)
    assert_no_traceback(page)

    set_number(page, "Batch size", "4")
    settle(page, "batch=4")
    if change:
        kind, label, in_url = change
        if kind == "toggle":
            page.get_by_text(label, exact=True).click()
        else:
            set_number(page, label, in_url.split("=")[1])
        settle(page, in_url)
    chart_drawn(page)
    assert_no_traceback(page)
    screenshot(page, f"{path or 'calculator'}.png")


def test_the_device_sets_the_budget_and_the_time_page(server, page):
    page.goto(f"{server['url']}/time_tradeoff?device=Jetson+Orin+Nano+8GB")
    settle(page)
    chart_drawn(page)
    titles = " ".join(page.locator(".js-plotly-plot .gtitle").all_text_contents())
    assert "on Jetson Orin Nano 8GB" in titles and "A100" not in titles
    assert "6.00 GB" in page.locator('[data-testid="stSidebar"]').inner_text()     # 8 GB less the 2 GB OS reserve
    screenshot(page, "time_tradeoff_jetson.png")


def test_chart_downloads_svg_png_and_csv(server, page):
    """The download buttons: SVG and PNG drawn by kaleido on click, CSV of the chart's data."""
    page.goto(server["url"])
    settle(page)
    chart_drawn(page)
    with page.expect_download() as svg:
        page.get_by_role("button", name="Download SVG").first.click()
    assert svg.value.suggested_filename.endswith(".svg")
    body = Path(svg.value.path()).read_bytes()
    assert b"<svg" in body[:500] and b"context 512" in body        # the title carries the scenario
    with page.expect_download() as png:
        page.get_by_role("button", name="Download PNG").first.click()
    assert Path(png.value.path()).read_bytes().startswith(b"\x89PNG")
    with page.expect_download() as csv:
        page.get_by_role("button", name="Download data (CSV)").first.click()
    assert Path(csv.value.path()).read_text().startswith("method,term,bytes,")


def test_validate_page(server, page):
    page.goto(f"{server['url']}/validate?model=tiny-llama&batch=1&seq=32&v_steps=2")
    settle(page)
    page.get_by_role("heading", name="Validate on this machine").wait_for()
    assert_no_traceback(page)
    assert page.get_by_text("auto will run on").count() == 1
    run = page.get_by_role("button", name="Run", exact=True)
    if run.is_disabled():
        assert page.get_by_text("validation engine is not available").count() == 1
    else:
        run.click()
        page.get_by_text("Latest run").wait_for()
        settle(page)
        assert_no_traceback(page)
        if page.get_by_text("The run failed").count() == 0:
            chart_drawn(page)
            assert page.get_by_text("Runs on this machine").count() == 1
            assert page.get_by_text(re.compile("^auto chose ")).count() == 1
        page.reload()                    # a new session: the run is still in the history
        settle(page)
        page.get_by_text("Runs on this machine").wait_for()
    screenshot(page, "validate.png")


# --- hostile input ----------------------------------------------------------------------

HOSTILE_PARAMS = {
    "batch": "1`![x](http://127.0.0.1:9/pixel.png)`",
    "dtype": "<img src=http://127.0.0.1:9/a.png>",
    "model": "[re-authenticate](http://127.0.0.1:9/login)",
    "seq": ":red[alarm] $x^2$ **bold** :material/home:",
    "opt": "<script>document.title='owned'</script>",
    "config": "`<b>x</b>`",
}


def hostile_requests(pg) -> list:
    seen = []
    pg.on("request", lambda r: seen.append(r.url) if "127.0.0.1:9" in r.url and "?" not in r.url else None)
    return seen


def assert_literal(pg, seen: list) -> None:
    """Nothing the user wrote became an element: no image, link, bold text, math or script
    from it, no request to the address it named."""
    main = pg.locator('[data-testid="stMain"]')
    assert main.locator("img").count() == 0
    assert main.locator("a[href*='127.0.0.1']").count() == 0
    assert main.locator(".katex").count() == 0
    assert pg.title() != "owned"
    assert not seen, seen
    assert_no_traceback(pg)


def test_hostile_link_parameters_are_shown_as_text(server, page):
    seen = hostile_requests(page)
    page.goto(f"{server['url']}/?{urllib.parse.urlencode(HOSTILE_PARAMS)}")
    settle(page)
    alerts = " ".join(page.locator('[data-testid="stAlert"]').all_inner_texts()).replace("\u200b", "")
    for value in HOSTILE_PARAMS.values():
        assert " ".join(value.split()) in alerts, value
    assert_literal(page, seen)
    screenshot(page, "hostile_link.png")


@pytest.mark.parametrize("name,content", [
    ("hostile-name.json", json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100,
                                      "_name_or_path": "[click](http://127.0.0.1:9/x) ![i](http://127.0.0.1:9/i.png) "
                                                       "<b>bold</b> :red[x]"})),
    ("list-type.json", json.dumps({"model_type": "llama", "hidden_act": ["silu"], "hidden_size": 64})),
    ("not-json.json", "{`![x](http://127.0.0.1:9/p.png)`"),
    ("deep.json", "[" * 50_000 + "]" * 50_000),
    ("huge-int.json", '{"model_type": "gpt2", "n_layer": 1' + "0" * 5000 + "}"),
], ids=["name", "list", "notjson", "deep", "hugeint"])
def test_hostile_uploads_keep_the_page_and_show_text(server, page, tmp_path, name, content):
    seen = hostile_requests(page)
    page.goto(f"{server['url']}/what_fits")
    settle(page)
    path = tmp_path / name
    path.write_text(content)
    page.get_by_text("Upload a config.json").click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    # Wait for the outcome itself: the model in the link, or the message naming the file.
    if name == "hostile-name.json":       # a usable config, named by its own (hostile) name, as text
        settle(page, "model=uploaded")
        model = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.evaluate(
            "e => e.textContent + ' ' + [...e.querySelectorAll('input')].map(i => i.value).join(' ')")
        assert "[click](http://127.0.0.1:9/x)" in model.replace("\u200b", "")
        assert "config=" in page.evaluate("location.href")
    else:
        page.get_by_text(f"Could not use the uploaded file {name}").wait_for()
        settle(page)
    assert_literal(page, seen)
    sync_api.expect(page.get_by_label("Batch size", exact=True)).to_have_value("8")   # the controls are still there
    screenshot(page, f"hostile_upload_{name.split('.')[0]}.png")


# --- last: the server's log and its stop ----------------------------------------------------

def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (zombies are done), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_server_log_stays_quiet_and_the_server_stops_at_once(server, page):
    """No file-watcher noise (inotify overflows), no tracebacks; a stop does not wait for
    background work, and everything the server started ends with it (the fork server and
    its workers, kaleido's Chromium)."""
    page.goto(f"{server['url']}/what_fits?batch=3")      # background work in flight
    page.wait_for_selector("h1")
    log = server["log"].read_text()
    for noise in ("Inotify", "inotify", "Traceback", "missing ScriptRunContext"):
        assert noise not in log, log[-3000:]
    proc = server["proc"]
    helpers = descendants(proc.pid)
    assert helpers, "the server started no helper processes (fork server, workers)"
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=STOP_LIMIT_S)
    assert time.time() - start < STOP_LIMIT_S
    deadline = time.time() + STOP_LIMIT_S      # helpers notice their parent is gone and end
    while any(map(alive, helpers)) and time.time() < deadline:
        time.sleep(0.2)
    left = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in helpers if alive(pid)]
    assert not left, f"still running after the server stopped: {left}"
