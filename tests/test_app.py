"""The Streamlit app under streamlit.testing's AppTest: every page renders, shows the numbers
`capacity` returns for the same inputs, keeps its scenario in the URL, and answers bad
input with a message instead of a traceback."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import capacity as cap
from pages import _runner, _ui

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
TIMEOUT = 60          # seconds for one script run (the first imports plotly and pandas)
PAGES = ["calculator", "memory_vs_context", "what_fits", "time_tradeoff", "validate"]

# The paper's setting, written out here rather than read from the app, so that a changed
# default fails a test: batch 8, Llama-2-7B, about 17 GB, 16-bit, AdamW for BP.
PAPER = dict(optimizer="adamw", batch=8, seq=512, dtype="bf16", mixed_precision=False,
             attention="eager", target="cuda")
BUDGET = 17 * 10**9
KEEP = 0.25
COLUMNS = [("Inference", "inference", 1.0), ("MeZO", "mezo", 1.0), ("BP", "bp", 1.0),
           ("BP checkpointed (L'/L=0.25)", "bp", KEEP)]


@pytest.fixture(autouse=True, scope="module")
def no_background_work_left():
    """Drop the background searches still queued when these tests end (they would take
    the CPU from the tests that follow)."""
    yield
    for future in list(_ui._FUTURES.values()):
        future.cancel()


def scenario(method, keep=1.0, **changes):
    return cap.Scenario(method=method, keep=keep, **{**PAPER, **changes})


def open_page(page, query=None):
    """Run app.py once (the default page), then the page itself."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


def assert_clean(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def wait_for_background(at, limit_s=90):
    """Rerun until the page's background searches have landed (no progress bar left)."""
    deadline = time.time() + limit_s
    while at.get("progress") and time.time() < deadline:
        time.sleep(0.3)
        at.run()
    assert not at.get("progress"), "the background searches did not finish in time"
    return at


def trace_values(trace, axis):
    """A Plotly trace's x or y as a list (Plotly sends numeric arrays base64-encoded)."""
    values = trace[axis]
    if isinstance(values, dict):
        import base64
        import numpy as np
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return values


def gb(n):
    return f"{n / 1e9:,.2f} GB"


def mb(n):
    return f"{n / 1e6:,.2f} MB"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(page):
    at = open_page(page)
    assert_clean(at)
    assert at.title[0].value


def test_calculator_shows_what_capacity_returns():
    at = open_page("calculator")
    assert_clean(at)
    shape = cap.load_preset("llama-2-7b")
    metrics = {m.label: m for m in at.metric}
    estimates = {}
    for label, method, keep in COLUMNS:
        est = estimates[label] = cap.estimate(shape, scenario(method, keep))
        assert metrics[label].value == gb(est.peak_bytes)
        assert ("over budget" in metrics[label].delta) == (est.peak_bytes > BUDGET)
    mezo, bp = estimates["MeZO"].peak_bytes, estimates["BP"].peak_bytes
    assert metrics["MeZO / BP memory"].value == f"{mezo / bp:.3f}"

    in_gb, in_gib = at.dataframe[0].value, at.dataframe[1].value     # the GB and GiB tabs
    for label, est in estimates.items():
        assert in_gb.loc["total (peak)", f"{label} [GB]"] == round(est.peak_bytes / 1e9, 3)
        assert in_gib.loc["total (peak)", f"{label} [GiB]"] == round(est.peak_bytes / 2**30, 3)
        for term in cap.TERMS:
            assert in_gb.loc[term.replace("_", " "), f"{label} [GB]"] == round(est.breakdown.get(term, 0) / 1e9, 3)


def test_accuracy_expander_shows_the_summary_or_says_it_is_missing(tmp_path, monkeypatch):
    doc = tmp_path / "accuracy.md"
    doc.write_text("# Accuracy\n\nHow it was measured.\n\n## Summary\n\n| method | error |\n|---|---|\n"
                   "| bp | 0.65% |\n\n## Details\n\nnot in the summary\n")
    monkeypatch.setattr(_ui, "ACCURACY_DOC", doc)
    at = open_page("calculator")
    accuracy = next(e for e in at.expander if e.label == "How accurate is this?")
    shown = " ".join(m.value for m in accuracy.markdown)
    assert "How it was measured." in shown and "| bp | 0.65% |" in shown and "not in the summary" not in shown
    monkeypatch.setattr(_ui, "ACCURACY_DOC", tmp_path / "missing.md")
    at = open_page("calculator")
    accuracy = next(e for e in at.expander if e.label == "How accurate is this?")
    assert "not there yet" in accuracy.info[0].value


def test_calculator_follows_a_sidebar_change_and_puts_it_in_the_url():
    at = open_page("calculator")
    at.number_input(key="w_batch").set_value(2).run()
    assert_clean(at)
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo", batch=2))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)
    # The link the app writes (AppTest records only the first run's URL; the browser
    # test checks the address bar) reproduces the change in a new session.
    params = _ui.url_params(at.session_state["scenario"])
    assert params == {"batch": "2"}
    again = open_page("what_fits", query=params)
    assert again.number_input(key="w_batch").value == 2


def test_a_link_reproduces_the_scenario():
    at = open_page("calculator", query={"model": "opt-1.3b", "batch": "1", "seq": "2048", "keep": "0.5"})
    assert_clean(at)
    shape = cap.load_preset("opt-1.3b")
    metrics = {m.label: m.value for m in at.metric}
    ckpt = cap.estimate(shape, scenario("bp", 0.5, batch=1, seq=2048))
    assert metrics["BP checkpointed (L'/L=0.5)"] == gb(ckpt.peak_bytes)


def test_a_bad_link_parameter_is_reported_and_ignored():
    at = open_page("calculator", query={"batch": "many", "dtype": "fp8"})
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "batch=many" in warnings and "dtype=fp8" in warnings
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo"))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)


def test_a_bad_upload_shows_an_error_not_a_traceback():
    at = open_page("calculator")
    at.file_uploader[0].set_value(("config.json", b"{not json", "application/json")).run()
    assert not at.exception
    assert any("Could not read config.json" in e.value and "JSON" in e.value for e in at.error)
    at.file_uploader[0].set_value(
        ("config.json", json.dumps({"model_type": "llama", "hidden_size": -4}).encode(), "application/json")).run()
    assert not at.exception
    assert any("hidden_size" in e.value for e in at.error)


def test_an_uploaded_config_becomes_the_model():
    config = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 1000}
    text = json.dumps(config).encode()
    at = open_page("calculator", query={"batch": "1", "seq": "64"})
    at.file_uploader[0].set_value(("tiny.json", text, "application/json")).run()
    assert_clean(at)
    shape = cap.parse_hf_config_text(text)
    est = cap.estimate(shape, scenario("bp", batch=1, seq=64))
    assert est.peak_bytes < 10**8     # a small model: shown in MB and MiB, not as 0.00 GB
    assert {m.label: m.value for m in at.metric}["BP"] == mb(est.peak_bytes)
    assert at.dataframe[1].value.loc["total (peak)", "BP [MiB]"] == round(est.peak_bytes / 2**20, 3)


def test_an_error_from_capacity_is_a_message_not_a_traceback(monkeypatch):
    def refuse(shape, sc):
        raise ValueError("seq: longer than the model's 1024 learned positions")
    monkeypatch.setattr(cap, "estimate", refuse)
    # The default page, run through app.py (AppTest runs a switched-to page on its own,
    # Streamlit's pages-folder mode, without the entry script that holds this handler).
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("1024 learned positions" in e.value and "sidebar" in e.value for e in at.error)


def test_an_oversized_upload_is_refused_with_a_reason():
    shape, error = _ui.read_upload("big.json", b" " * (_ui.UPLOAD_LIMIT_BYTES + 1))
    assert shape is None and "limit" in error


def test_memory_vs_context_plots_what_capacity_returns():
    at = open_page("memory_vs_context")
    assert_clean(at)
    data = at.dataframe[0].value
    shape = cap.load_preset("llama-2-7b")
    for row, keep in (("Conventional BP", 1.0), ("Checkpointed BP (L'/L=0.25)", KEEP)):
        point = data[(data["row"] == row) & (data["context"] == 2048)].iloc[0]
        bp = cap.estimate(shape, scenario("bp", keep, seq=2048)).peak_bytes
        mezo = cap.estimate(shape, scenario("mezo", seq=2048)).peak_bytes
        assert point["BP [GB]"] == round(bp / 1e9, 3)
        assert point["MeZO [GiB]"] == round(mezo / 2**30, 3)
        assert point["MeZO/BP"] == round(mezo / bp, 3)
    assert data["context"].max() == 8192


def test_memory_vs_context_log_axes():
    at = open_page("memory_vs_context")
    at.toggle(key="w_log").set_value(True).run()
    assert_clean(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["yaxis"]["type"] == "log"
    assert "ratio" in " ".join(t["name"] for t in spec["data"])


def test_what_fits_shows_the_largest_presets_capacity_finds():
    at = wait_for_background(open_page("what_fits"))
    assert_clean(at)
    table = at.dataframe[0].value
    for family in cap.families():
        for label, method, keep in COLUMNS:
            name, _ = cap.largest_preset(family, BUDGET, scenario(method, keep))
            assert table.loc[family, label] == (name or "none fits")
    shape = cap.load_preset("llama-2-7b")
    metrics = {m.label: m.value for m in at.metric}
    ratio = cap.relative_model_size(shape, BUDGET, scenario("bp"), scenario("mezo"))
    assert metrics["P_MeZO / P_BP"] == f"{ratio:.2f}"
    _, params = cap.largest_scaled_model(shape, BUDGET, scenario("mezo"))
    assert metrics["MeZO"] == f"{params / 1e9:,.2f} B"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    vs_bp = next(t for t in spec["data"] if t["name"] == "vs BP")
    point = trace_values(vs_bp, "x").index(BUDGET / 1e9)
    assert trace_values(vs_bp, "y")[point] == pytest.approx(ratio)


def test_what_fits_follows_the_device():
    at = open_page("what_fits")
    at.selectbox(key="w_device").set_value("A100 80GB").run()
    assert_clean(at)
    budget = cap.load_device("A100 80GB").memory_bytes
    name, _ = cap.largest_preset("OPT", budget, scenario("mezo"))
    assert at.dataframe[0].value.loc["OPT", "MeZO"] == (name or "none fits")


def test_time_tradeoff_shows_capacity_time_and_the_paper_experiment():
    at = open_page("time_tradeoff")
    assert_clean(at)
    device = cap.load_device("A100 80GB")
    shape = cap.load_preset("llama-2-7b")
    rows = at.dataframe[0].value.set_index("setup")
    for label, method, keep in COLUMNS[1:]:
        sc = scenario(method, keep)
        per_step = cap.step_time_seconds(shape, sc, device)
        steps = 1000 * (cap.MEZO_STEPS_MULTIPLIER if method == "mezo" else 1)
        assert rows.loc[label, "time per step [s]"] == round(per_step, 4)
        assert rows.loc[label, "time to target [h]"] == round(steps * per_step / 3600, 3)
        assert rows.loc[label, "FLOPs per step"] == f"{cap.flops_per_step(shape, sc):.3e}"
    assert any(cap.MEZO_STEPS_SOURCE in c.value for c in at.caption)
    # The paper's experiment: BP on GPT2-medium against MeZO on the largest Llama-2 that fits.
    mezo_name, _ = cap.largest_preset("Llama-2", BUDGET, scenario("mezo"))
    setups = list(at.dataframe[1].value["setup"])
    assert setups[0] == "BP on gpt2-medium"
    assert setups[1] == f"MeZO on {mezo_name}"


def test_time_tradeoff_steps_multiplier_and_efficiency_are_inputs():
    at = open_page("time_tradeoff", query={"mult": "10", "eff": "0.5"})
    assert_clean(at)
    rows = at.dataframe[0].value.set_index("setup")
    assert rows.loc["MeZO", "steps"] == 10_000
    per_step = cap.step_time_seconds(cap.load_preset("llama-2-7b"), scenario("mezo"), cap.load_device("A100 80GB"),
                                     efficiency=0.5)
    assert rows.loc["MeZO", "time per step [s]"] == round(per_step, 4)
    at.number_input(key="w_mult").set_value(20.0).run()
    assert at.dataframe[0].value.set_index("setup").loc["MeZO", "steps"] == 20_000


# --- the Validate page, with stand-in engines written by the tests ------------------

FAKE_ENGINE = r'''
import json, sys, time
argv = sys.argv[1:]
if "--help" in argv:
    print("usage: validate --preset NAME --method M ..."); sys.exit(0)
mode = argv[0]
for i in range(3):
    print(json.dumps({"event": "progress", "step": i + 1, "total": 3, "message": "step"}), file=sys.stderr, flush=True)
if mode == "fail":
    print("error: CUDA requested but not available", file=sys.stderr); sys.exit(3)
if mode == "oom":
    print(json.dumps({"oom": True, "message": "out of memory at step 2", "measured_peak_bytes": None,
                      "predicted_peak_bytes": 9_000_000_000, "error_pct": None,
                      "breakdown": {"measured": None, "predicted": {"weights": 9_000_000_000}}, "device": "cuda"}))
    print("error: out of memory at step 2", file=sys.stderr); sys.exit(5)
if mode == "sleep":
    time.sleep(60)
result = {"measured_peak_bytes": 2_000_000_000, "predicted_peak_bytes": 2_100_000_000, "error_pct": 5.0,
          "breakdown": {"measured": {"weights": 1_500_000_000, "activations": 500_000_000},
                        "predicted": {"weights": 1_500_000_000, "activations": 600_000_000}},
          "losses": [2.0, 1.9], "step_seconds": [0.1, 0.1], "device": "cpu", "argv": argv}
print("some log line")
print(json.dumps(result))
'''


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """Point the runner at a stand-in engine; `mode` (ok, fail, sleep) is its first argument."""
    script = tmp_path / "engine.py"
    script.write_text(FAKE_ENGINE)

    def use(mode="ok"):
        monkeypatch.setattr(_runner, "ENGINE", [sys.executable, str(script), mode])
        monkeypatch.setattr(_runner, "ENGINES", ([sys.executable, str(script), mode],))
        _ui.engine_available.clear()
    yield use
    _ui.engine_available.clear()


def wait_until_finished(at, limit_s=20):
    deadline = time.time() + limit_s
    while at.session_state["validate_run"].running and time.time() < deadline:
        time.sleep(0.1)
    at.run()


def test_validate_without_an_engine_says_so(monkeypatch):
    missing = [sys.executable, "-c", "import sys; sys.exit('No module named capacity.validation')"]
    monkeypatch.setattr(_runner, "ENGINE", missing)
    monkeypatch.setattr(_runner, "ENGINES", (missing,))
    _ui.engine_available.clear()
    try:
        at = open_page("validate")
    finally:
        _ui.engine_available.clear()
    assert not at.exception
    assert any("not available" in w.value and "capacity.validation" in w.value for w in at.warning)
    assert at.button[0].disabled


def test_validate_runs_the_engine_and_keeps_the_history(fake_engine):
    fake_engine("ok")
    at = open_page("validate")
    assert_clean(at)
    at.button[0].click().run()
    wait_until_finished(at)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Measured peak"] == "2.00 GB" and metrics["Predicted peak"] == "2.10 GB"
    assert metrics["Error"] == "+5.00 %"
    argv = at.session_state["validate_history"][-1]["result"]["argv"]
    assert argv[argv.index("--preset") + 1] == "llama-2-7b" and argv[argv.index("--batch") + 1] == "8"
    assert argv[argv.index("--device") + 1] == "auto" and argv[argv.index("--timeout") + 1] == "300"
    breakdown = at.dataframe[0].value.set_index("term")
    assert breakdown.loc["activations", "predicted [GB]"] == 0.6
    at.button[0].click().run()          # a second run: two rows in the history
    wait_until_finished(at)
    assert len(at.dataframe[1].value) == 2


def test_a_failed_run_is_a_message(fake_engine):
    fake_engine("fail")
    at = open_page("validate")
    at.button[0].click().run()
    wait_until_finished(at)
    assert not at.exception
    assert any(e.value == "The run failed: CUDA requested but not available" for e in at.error)


def test_checkpointed_bp_passes_the_sidebar_ratio(fake_engine):
    fake_engine("ok")
    at = open_page("validate")
    at.selectbox(key="w_v_method").set_value("bp").run()
    at.button[0].click().run()
    wait_until_finished(at)
    argv = at.session_state["validate_history"][-1]["result"]["argv"]
    assert argv[argv.index("--method") + 1] == "bp" and argv[argv.index("--keep") + 1] == "1"
    at.selectbox(key="w_v_method").set_value("bp checkpointed").run()
    at.button[0].click().run()
    wait_until_finished(at)
    argv = at.session_state["validate_history"][-1]["result"]["argv"]
    assert argv[argv.index("--method") + 1] == "bp" and argv[argv.index("--keep") + 1] == "0.25"


def test_out_of_memory_is_a_result(fake_engine):
    fake_engine("oom")
    at = open_page("validate")
    at.button[0].click().run()
    wait_until_finished(at)
    assert not at.exception
    assert any("out of memory at step 2" in e.value for e in at.error)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Measured peak"] == "n/a" and metrics["Predicted peak"] == "9.00 GB"


def test_cancel_and_time_limit_end_the_child(fake_engine, monkeypatch):
    fake_engine("sleep")
    monkeypatch.setattr(_runner, "EXTRA_SECONDS", 0)
    run = _runner.EngineRun([], time_limit_s=30, label="cancel me")
    time.sleep(0.5)
    run.cancel()
    assert run.status == "cancelled" and run._proc.poll() is not None
    run = _runner.EngineRun([], time_limit_s=1, label="too slow")
    deadline = time.time() + 15
    while run.running and time.time() < deadline:
        time.sleep(0.1)
    assert run.status == "timed out" and run._proc.poll() is not None
    assert run.total == 3          # the progress lines were read


@pytest.mark.skipif(not _ui.export_available(), reason="kaleido needs Chromium (/usr/bin/chromium) to draw files")
def test_figure_export_draws_png_and_svg():
    import plotly.graph_objects as go
    fig = _ui.style(go.Figure(go.Bar(x=["a"], y=[1])), "t")
    assert _ui.figure_bytes(fig, "png").startswith(b"\x89PNG")
    assert b"<svg" in _ui.figure_bytes(fig, "svg")[:200]
