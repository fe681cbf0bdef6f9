"""The Streamlit app under streamlit.testing's AppTest: every page renders, shows the numbers
`capacity` returns for the same inputs, keeps its scenario in the URL, and answers bad or
hostile input with a message (never a traceback, never user text rendered as Markdown)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import capacity as cap
from capacity import scenario as cap_scenario
from ui import _accuracy, _background, _capacity, _export, _format, _runner, _runs, _scenario

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
TIMEOUT = 60          # seconds for one script run (the first imports plotly and pandas)
PAGES = ["calculator", "memory_vs_context", "what_fits", "time_tradeoff", "validate"]

# The paper's setting, written out here rather than read from the app, so that a changed
# default fails a test: batch 8, Llama-2-7B, about 17 GB, 16-bit, AdamW for BP; SDPA
# attention (what transformers runs by default) and the default loop.
PAPER = dict(optimizer="adamw", batch=8, seq=512, dtype="bf16", mixed_precision=False,
             attention="sdpa", target="cuda")
BUDGET = 17 * 10**9
KEEP = 0.25
COLUMNS = [("Inference", "inference", 1.0), ("MeZO", "mezo", 1.0), ("BP", "bp", 1.0),
           ("BP checkpointed (L'/L=0.25)", "bp", KEEP)]


@pytest.fixture(autouse=True)
def history_file(tmp_path, monkeypatch):
    """Each test keeps its validation runs in its own file."""
    path = tmp_path / "runs.jsonl"
    monkeypatch.setattr(_runs, "HISTORY_FILE", path)
    return path


@pytest.fixture(autouse=True)
def fresh_capacity_answers():
    """Each test starts without the app's kept capacity answers (a test may replace one of
    capacity's functions)."""
    _capacity.forget()


def scenario(method, keep=1.0, **changes):
    return cap.Scenario(method=method, keep=keep, **{**PAPER, **changes})


def open_page(page, query=None, opened=()):
    """Run app.py once (the default page), then the page itself, with the expanders whose
    keys are in `opened` open (ui/_expander.lazy: their content is drawn only when open)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    at.switch_page(f"ui/{page}.py")
    for key in opened:
        at.session_state[key] = True
    at.run()
    return at


def shown(text: str) -> str:
    """Markdown-escaped text (ui._format.md) as a reader sees it."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text).replace("\u200b", "")


def messages(at, kind="warning"):
    return " ".join(shown(e.value) for e in getattr(at, kind))


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


def captions(at) -> str:
    return " ".join(shown(c.value) for c in at.caption)


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
        over = est.peak_bytes > BUDGET
        # the words say which way, without a minus sign or an arrow
        assert metrics[label].delta == (f"{gb(est.peak_bytes - BUDGET)} over budget" if over
                                        else f"fits, {gb(BUDGET - est.peak_bytes)} free")
    mezo, bp = estimates["MeZO"].peak_bytes, estimates["BP"].peak_bytes
    assert metrics["MeZO / BP memory"].value == f"{mezo / bp:.3f}"

    in_gb = at.dataframe[0].value                  # one table, in the units chosen above it
    assert not [c for c in in_gb.columns if "GiB" in c]
    at.segmented_control(key="w_units").set_value("binary").run()
    assert_clean(at)
    in_gib = at.dataframe[0].value
    assert not [c for c in in_gib.columns if "[GB]" in c]
    assert _scenario.url_params(at.session_state["scenario"]) == {"units": "binary"}      # in the link
    for label, est in estimates.items():
        assert in_gb.loc["total (peak)", f"{label} [GB]"] == round(est.peak_bytes / 1e9, 3)
        assert in_gib.loc["total (peak)", f"{label} [GiB]"] == round(est.peak_bytes / 2**30, 3)
        for term in cap.TERMS:
            assert in_gb.loc[term.replace("_", " "), f"{label} [GB]"] == round(est.breakdown.get(term, 0) / 1e9, 3)


def test_attention_defaults_to_sdpa_and_says_so():
    at = open_page("calculator")
    assert at.selectbox(key="w_attn").value == "sdpa" == cap.Scenario().attention
    assert "what transformers runs" in at.selectbox(key="w_attn").help


def test_the_page_says_what_the_figures_were_measured_against(tmp_path, monkeypatch):
    at = open_page("calculator")
    text = captions(at)
    row = _accuracy.summary_row()
    assert "CPU kernel semantics" in text and "Measured on a GPU" in text and _accuracy.CUDA_UNMEASURED in text
    assert f"{row['cases']} cases, median error {row['median']}, worst {row['worst']}" in text
    assert _accuracy.gpu_summary() in text and "within 3%" in _accuracy.gpu_summary()
    assert "use_cache=False" in text                 # what "inference" means
    at.selectbox(key="w_target").set_value("cpu").run()
    assert "CPU kernels' figures" in captions(at) and _accuracy.CUDA_UNMEASURED not in captions(at)


def test_accuracy_expander_shows_the_summary_or_says_it_is_missing(tmp_path, monkeypatch):
    doc = tmp_path / "accuracy.md"
    doc.write_text("# Accuracy\n\nHow it was measured.\n\n## Summary\n\n| method | cases | median abs error | "
                   "worst abs error | within 3% |\n|---|---|---|---|---|\n| all | 9 | 0.65% | 1.5% | 9/9 |\n\n"
                   "## Details\n\nnot in the summary\n")
    monkeypatch.setattr(_accuracy, "ACCURACY_DOC", doc)
    at = open_page("calculator", opened=["open_accuracy"])
    accuracy = next(e for e in at.expander if e.label == "How accurate is this?")
    shown_text = " ".join(m.value for m in accuracy.markdown)
    assert "How it was measured." in shown_text and "| all | 9 | 0.65% |" in shown_text
    assert "not in the summary" not in shown_text
    assert "9 cases, median error 0.65%, worst 1.5%" in captions(at)
    monkeypatch.setattr(_accuracy, "ACCURACY_DOC", tmp_path / "missing.md")
    at = open_page("calculator", opened=["open_accuracy"])
    accuracy = next(e for e in at.expander if e.label == "How accurate is this?")
    assert "not there yet" in accuracy.info[0].value
    assert "no accuracy report" in captions(at)


def test_calculator_follows_a_sidebar_change_and_puts_it_in_the_url():
    at = open_page("calculator")
    at.number_input(key="w_batch").set_value(2).run()
    assert_clean(at)
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo", batch=2))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)
    # The link the app writes (AppTest records only the first run's URL; the browser
    # test checks the address bar) reproduces the change in a new session.
    params = _scenario.url_params(at.session_state["scenario"])
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
    assert "batch=many" in messages(at) and "dtype=fp8" in messages(at)
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo"))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)


HOSTILE = ["1`![x](http://127.0.0.1:9/pixel.png)`", "<img src=x onerror=alert(1)>", "[re-authenticate](http://x.test/)",
           ":red[alarm] $x^2$ **bold** :material/home:", "a\\`b`\nc"]


def test_hostile_link_parameters_are_shown_literally():
    """No user text is rendered as Markdown: every ASCII punctuation is escaped, so no link,
    image, code span, colour directive, math or HTML can form."""
    at = open_page("calculator", query={"batch": HOSTILE[0], "dtype": HOSTILE[1], "model": HOSTILE[2],
                                        "seq": HOSTILE[3], "opt": HOSTILE[4], "config": HOSTILE[0]})
    assert not at.exception
    bodies = [w.value for w in at.warning]
    assert len(bodies) == 6
    for body in bodies:
        unescaped = re.sub(r"\\[!-/:-@\[-`{-~]", "", body)
        assert not re.search(r"[`\[\]<>*$]", unescaped), body        # every such character escaped
    assert HOSTILE[0] in messages(at) and HOSTILE[2] in messages(at)


def test_markdown_escape_leaves_no_markup():
    for text in HOSTILE:
        out = _format.md(text)
        assert shown(out) == " ".join(text.split())
        unescaped = re.sub(r"\\[!-/:-@\[-`{-~]", "", out.replace("\u200b", ""))
        assert not re.search(r"[!-/:-@\[-`{-~]", unescaped), out         # every punctuation escaped
    assert "<" not in _format.html_text("<a href='x'>y</a>") and "&lt;a" in _format.html_text("<a>")


def test_a_bad_upload_shows_an_error_not_a_traceback():
    at = open_page("calculator")
    at.file_uploader[0].set_value(("config.json", b"{not json", "application/json")).run()
    assert not at.exception
    assert "Could not use the uploaded file config.json" in messages(at, "error") and "JSON" in messages(at, "error")
    at.file_uploader[0].set_value(
        ("config.json", json.dumps({"model_type": "llama", "hidden_size": -4}).encode(), "application/json")).run()
    assert not at.exception
    assert "hidden_size" in messages(at, "error")
    assert at.number_input(key="w_batch").value == 8        # the controls are all still there


@pytest.mark.parametrize("config", [
    {"model_type": "llama", "hidden_act": ["silu"], "hidden_size": 64},
    {"model_type": "gpt2", "activation_function": {}, "n_embd": 64},
    {"model_type": ["gpt2"]},
    [1, 2, 3],
    {"model_type": "gpt2", "n_layer": 10**5000},
])
def test_hostile_uploads_keep_every_control(config):
    at = open_page("calculator")
    text = json.dumps(config).encode() if not isinstance(config, dict) or "n_layer" not in config else (
        b'{"model_type": "gpt2", "n_layer": 1' + b"0" * 5000 + b"}")
    at.file_uploader[0].set_value(("bad.json", text, "application/json")).run()
    assert not at.exception
    assert "Could not use the uploaded file bad.json" in messages(at, "error")
    assert at.number_input(key="w_batch").value == 8 and at.selectbox(key="w_model").value == "llama-2-7b"
    assert len(at.metric) == 7            # four peaks, two ratios, the trainable parameters


TINY = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 1000}


def test_an_uploaded_config_becomes_the_model_named_by_its_own_name():
    config = {**TINY, "_name_or_path": "acme/tiny-gpt2"}
    text = json.dumps(config).encode()
    at = open_page("calculator", query={"batch": "1", "seq": "64", "units": "binary"})
    at.file_uploader[0].set_value(("config.json", text, "application/json")).run()
    assert_clean(at)
    shape = cap.parse_hf_config_text(text)
    est = cap.estimate(shape, scenario("bp", batch=1, seq=64))
    assert est.peak_bytes < 10**8     # a small model: shown in MB and MiB, not as 0.00 GB
    assert {m.label: m.value for m in at.metric}["BP"] == mb(est.peak_bytes)
    assert at.dataframe[0].value.loc["total (peak)", "BP [MiB]"] == round(est.peak_bytes / 2**20, 3)
    name = at.session_state["uploaded_name"]
    assert name == f"acme/tiny-gpt2 (gpt2, {_format.params_text(cap.parameter_count(shape))})"
    assert name in captions(at)
    # Without its own name, the file's name.
    at.file_uploader[0].set_value(("tiny.json", json.dumps(TINY).encode(), "application/json")).run()
    assert at.session_state["uploaded_name"].startswith("tiny (gpt2, ")


def test_a_link_carries_an_uploaded_model(monkeypatch):
    text = json.dumps({**TINY, "_name_or_path": "acme/tiny-gpt2"}, indent=2).encode()
    at = open_page("calculator", query={"batch": "1", "seq": "64"})
    at.file_uploader[0].set_value(("config.json", text, "application/json")).run()
    params = _scenario.url_params(at.session_state["scenario"], at.session_state["uploaded_text"])
    assert params["model"] == "uploaded" and "config" in params
    reads = []
    read_upload = _scenario.read_upload
    monkeypatch.setattr(_scenario, "read_upload", lambda *a: reads.append(a) or read_upload(*a))
    again = open_page("what_fits", query=params)
    assert_clean(again)
    assert len(reads) == 1                              # read once, when the session starts
    assert again.session_state["uploaded_name"] == at.session_state["uploaded_name"]
    assert again.selectbox(key="w_model").value == "uploaded"
    assert "Link parameter ignored" not in messages(again)


def test_a_link_config_that_inflates_too_far_is_refused():
    import base64
    import zlib
    bomb = base64.urlsafe_b64encode(zlib.compress(b" " * (2 * _scenario.UPLOAD_LIMIT_BYTES), 9)).decode()
    assert len(bomb) < _scenario.LINK_CONFIG_MAX_CHARS
    with pytest.raises(ValueError, match="more than"):
        _scenario.unpack_config(bomb)
    at = open_page("calculator", query={"config": bomb, "model": "uploaded"})
    assert not at.exception and "config=" in messages(at)


def test_a_refused_scenario_is_a_message_and_the_sidebar_stays(monkeypatch):
    def refuse(shape, sc):
        raise ValueError("seq: longer than the model's 1024 learned positions")
    monkeypatch.setattr(cap, "estimate", refuse)
    at = open_page("calculator")
    assert not at.exception and not at.error
    assert "1024 learned positions" in messages(at)
    assert at.number_input(key="w_seq").value == 512


def test_the_trainer_loop_is_a_message_until_it_is_modelled():
    at = open_page("calculator", query={"loop": "trainer"})
    assert not at.exception and not at.error
    sc = scenario("bp", loop=cap_scenario.loop_preset("trainer"))
    try:
        cap.estimate(cap.load_preset("llama-2-7b"), sc)
    except ValueError as err:                          # not modelled yet: its own words
        assert shown(_format.md(err)) in messages(at)
    else:                                              # modelled: the numbers
        assert {m.label: m.value for m in at.metric}["BP"] == gb(cap.estimate(cap.load_preset("llama-2-7b"), sc).peak_bytes)
        assert "trainer loop" in captions(at)


def test_loop_settings_reach_the_scenario():
    at = open_page("calculator", query={"opt_impl": "forloop", "hold": "dropped", "accum": "4"})
    s = at.session_state["scenario"]
    assert (s["opt_impl"], s["hold"], s["accum"]) == ("forloop", "dropped", 4)
    loop = cap_scenario.loop_preset(cap_scenario.DEFAULT_LOOP, optimizer_impl="forloop", hold_outputs=False,
                                    grad_accum=4)
    sc = scenario("bp", loop=loop)
    try:
        est = cap.estimate(cap.load_preset("llama-2-7b"), sc)
    except ValueError as err:
        assert shown(_format.md(err)) in messages(at)
    else:
        assert {m.label: m.value for m in at.metric}["BP"] == gb(est.peak_bytes)


def test_an_oversized_upload_is_refused_with_a_reason():
    shape, name, error = _scenario.read_upload("big.json", b" " * (_scenario.UPLOAD_LIMIT_BYTES + 1))
    assert shape is None and "limit" in error


def test_memory_vs_context_plots_what_capacity_returns():
    at = open_page("memory_vs_context", opened=["open_numbers"])
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


def test_memory_vs_context_opens_readable_with_round_ratio_ticks():
    """Log axes by default (BP, MeZO and the budget all readable); the linear view is
    clipped at a multiple of the budget; the ratio axis ticks at round steps."""
    at = open_page("memory_vs_context", opened=["open_numbers"])
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["yaxis"]["type"] == "log"
    ratio_axis = spec["layout"]["yaxis2"]
    assert ratio_axis["tick0"] == 0 and ratio_axis["dtick"] in (0.05, 0.1, 0.2, 0.25, 0.5, 1)
    at.toggle(key="w_log").set_value(False).run()
    assert_clean(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    top = spec["layout"]["yaxis"]["range"][1]
    data = at.dataframe[0].value
    conventional = data[data["row"] == "Conventional BP"]
    assert top <= max(3 * BUDGET / 1e9, 1.1 * conventional["MeZO [GB]"].max(), 1.5 * conventional["BP [GB]"].min()) + 1e-3
    assert top < conventional["BP [GB]"].max()          # clipped: BP's top is off the chart, MeZO is on it
    assert "ratio" in " ".join(t["name"] for t in spec["data"])
    assert "stops near 3x the budget" in captions(at)


@pytest.mark.parametrize("top,step", [(0.22, 0.05), (0.9, 0.2), (3.1, 1), (47, 10)])
def test_round_ticks(top, step):
    axis = _export.round_ticks(top)
    assert axis["dtick"] == pytest.approx(step) and axis["range"][1] >= top


def test_what_fits_shows_the_largest_presets_with_size_and_peak():
    at = wait_for_background(open_page("what_fits"))
    assert_clean(at)
    table = at.dataframe[0].value
    overall = {}
    for family in cap.families():
        for label, method, keep in COLUMNS:
            name, est = cap.largest_preset(family, BUDGET, scenario(method, keep))
            expected = "none fits" if name is None else (
                f"{name} ({_format.params_text(est.params)}, {_format.size_text(est.peak_bytes)})")
            assert table.loc[family, label] == expected
            if name and est.params > overall.get(label, (None, 0))[1]:
                overall[label] = (name, est.params)
    largest = {m.label: m.value for m in at.metric[:len(COLUMNS)]}   # "Largest preset overall"
    for label, (name, _) in overall.items():
        assert largest[label] == name                 # the largest preset overall, per method
    metrics = {m.label: m.value for m in at.metric[len(COLUMNS):]}
    shape = cap.load_preset("llama-2-7b")
    ratio = cap.relative_model_size(shape, BUDGET, scenario("bp"), scenario("mezo"))
    assert metrics["P_MeZO / P_BP"] == f"{ratio:.2f}"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    vs_bp = next(t for t in spec["data"] if t["name"] == "vs BP")
    point = trace_values(vs_bp, "x").index(BUDGET / 1e9)
    assert trace_values(vs_bp, "y")[point] == pytest.approx(ratio)


def test_kept_answers_are_capacitys():
    """ui/_capacity.py keeps capacity's answers: the same presets, estimates and largest
    presets as capacity gives (or the same refusal), at budgets on either side of a preset's
    own peak."""
    assert {f: list(names) for f, names in _capacity.families().items()} == cap.families()

    def answer(largest_preset, *args):
        try:
            return largest_preset(*args)
        except ValueError as err:
            return str(err)

    # MeZO, checkpointed BP, and a context beyond some families' learned positions (refused)
    methods = [scenario("mezo"), scenario("bp", KEEP), scenario("bp", seq=4096, batch=1)]
    refused = 0
    for family, names in cap.families().items():
        for sc in methods:
            peaks = []
            for name in names:
                try:
                    peaks.append(cap.estimate(cap.load_preset(name), sc).peak_bytes)
                except ValueError:
                    pass
            middle = sorted(peaks)[len(peaks) // 2:][:1]          # a middle preset's peak, if any
            edges = [p + d for p in middle for d in (-1, 0)]
            for budget in [1, BUDGET, *edges]:
                ours = answer(_capacity.largest_preset, family, budget, sc)
                assert ours == answer(cap.largest_preset, family, budget, sc)
                refused += isinstance(ours, str)
                if isinstance(ours, tuple) and ours[0] is not None:
                    assert ours[1] == cap.estimate(cap.load_preset(ours[0]), sc)
    assert refused                     # the refusals were compared too
    for args in (("no-such-family", BUDGET, methods[0]), ("OPT", 0, methods[0]), ("OPT", 1.5, methods[0])):
        assert answer(_capacity.largest_preset, *args) == answer(cap.largest_preset, *args)
        assert isinstance(answer(_capacity.largest_preset, *args), str)


def test_what_fits_follows_the_device_and_its_os_reserve():
    at = open_page("what_fits")
    at.selectbox(key="w_device").set_value("Jetson Orin Nano 8GB").run()
    assert_clean(at)
    dev = cap.load_device("Jetson Orin Nano 8GB")
    assert dev.os_reserve_bytes > 0 and dev.os_reserve_source
    budget = dev.memory_bytes - dev.os_reserve_bytes
    assert at.session_state["scenario"]["reserve_gb"] < 0          # the device's own reserve
    name, est = cap.largest_preset("OPT", budget, scenario("mezo"))
    assert at.dataframe[0].value.loc["OPT", "MeZO"].startswith(name or "none fits")
    # The reserve is editable: a smaller one leaves more for the model.
    at.number_input(key="w_reserve_gb").set_value(0.5).run()
    assert at.session_state["scenario"]["reserve_gb"] == 0.5
    name, _ = cap.largest_preset("OPT", dev.memory_bytes - 5 * 10**8, scenario("mezo"))
    assert at.dataframe[0].value.loc["OPT", "MeZO"].startswith(name or "none fits")
    # A new device brings its own reserve.
    at.selectbox(key="w_device").set_value("A100 80GB").run()
    assert at.session_state["scenario"]["reserve_gb"] < 0 and at.number_input(key="w_reserve_gb").value == 0


def test_every_unified_memory_device_keeps_a_sourced_reserve():
    for name in cap.device_names():
        dev = cap.load_device(name)
        unified = name.startswith(("Jetson", "Apple", "Phone"))
        assert (dev.os_reserve_bytes > 0) == unified, name
        assert 0 <= dev.os_reserve_bytes < dev.memory_bytes and dev.usable_memory_bytes > 0
        assert bool(dev.os_reserve_source) == unified


def test_time_tradeoff_uses_the_sidebar_device():
    at = open_page("time_tradeoff", query={"device": "Jetson Orin Nano 8GB"}, opened=["open_wall_clock"])
    assert_clean(at)
    dev = cap.load_device("Jetson Orin Nano 8GB")
    shape = cap.load_preset("llama-2-7b")
    rows = at.dataframe[0].value.set_index("setup")
    assert rows.loc["MeZO", "time per step [s]"] == round(cap.step_time_seconds(shape, scenario("mezo"), dev), 4)
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    budget = dev.memory_bytes - dev.os_reserve_bytes
    assert f"at {gb(budget)} on Jetson Orin Nano 8GB" in spec["layout"]["title"]["text"]
    assert "w_time_device" not in [box.key for box in at.selectbox]   # no second device to choose


def test_time_tradeoff_shows_capacity_time_and_the_paper_experiment():
    at = open_page("time_tradeoff")
    assert_clean(at)
    device = cap.load_device("A100 80GB")          # a custom budget: the throughput device chosen on the page
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


def test_figure_titles_carry_the_whole_scenario():
    at = open_page("calculator", query={"device": "Phone 8GB", "dtype": "fp16", "opt": "sgd", "seq": "256"})
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    subtitle = spec["layout"]["title"]["subtitle"]["text"].replace("<br>", " ")
    for part in ("batch 8", "context 256", "fp16", "sgd", "sdpa attention", "loop", "cuda kernels", "Phone 8GB",
                 gb(cap.load_device("Phone 8GB").usable_memory_bytes)):
        assert part in subtitle, part


# --- several devices: the Devices section, per-device figures, devices needed -----------

A100 = "A100 80GB"


def on(devices, sharding, offload=False):
    return cap.Parallel(devices=devices, sharding=sharding, offload_optimizer=offload)


def a100_budget():
    dev = cap.load_device(A100)
    return dev.memory_bytes - dev.os_reserve_bytes


def test_lora_over_several_devices_is_figures_and_what_is_not_modelled_a_way_out():
    """LoRA over a 16-bit base is modelled over several devices (capacity/sharding.py): the
    Devices and Fine-tuning sections together give per-device figures, capacity's; a
    quantized base or the top layers there is a refusal naming it, with a way out."""
    at = open_page("calculator", query={"peft": "lora", "devices": "8", "sharding": "fsdp"})
    assert_clean(at)
    shape = cap.load_preset("llama-2-7b")
    metrics = {m.label: m.value for m in at.metric}
    pf = cap_scenario.Peft(method="lora", lora_rank=at.number_input(key="w_lora_r").value)
    r = pf.lora_rank
    labels = ["Inference", f"MeZO-LoRA r={r}", f"BP-LoRA r={r}", f"BP-LoRA r={r} checkpointed (L'/L=0.25)"]
    for label, (_, method, keep) in zip(labels, COLUMNS):
        est = cap.estimate(shape, scenario(method, keep, parallel=on(8, "fsdp"), peft=pf))
        assert metrics[label] == gb(est.peak_bytes), label
    assert est.breakdown["all_gather_buffers"] > 0 and est.trainable_params < est.params
    for query, words, fix in (({"wbits": "4", "peft": "lora"}, "quantized base (QLoRA, 8-bit) over several devices",
                               "Use a 16-bit base (LoRA over several devices is modelled)"),
                              ({"peft": "freeze"}, "training the top layers over several devices",
                               "Train LoRA adapters (modelled over several devices)")):
        at = open_page("calculator", query={**query, "devices": "8", "sharding": "fsdp"})
        assert not at.exception
        assert words in messages(at) and not at.metric
        next(b for b in at.button if b.label == fix).click().run()
        assert_clean(at)
        assert at.metric and words not in messages(at)


def test_an_old_link_without_devices_is_one_device():
    at = open_page("calculator", query={"batch": "2"})
    assert_clean(at)
    s = at.session_state["scenario"]
    assert (s["devices"], s["sharding"], s["offload"]) == (1, "none", False)
    assert at.title[0].value == "Memory calculator"           # no "per device" on one device
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo", batch=2))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)
    assert "devices" not in _scenario.url_params(s) and "sharding" not in _scenario.url_params(s)


def test_the_devices_section_shards_every_figure_and_says_per_device():
    at = open_page("calculator", query={"device": A100})
    at.number_input(key="w_devices").set_value(8).run()
    at.selectbox(key="w_sharding").set_value("fsdp").run()
    assert_clean(at)
    shape = cap.load_preset("llama-2-7b")
    metrics = {m.label: m.value for m in at.metric}
    in_gb = at.dataframe[0].value
    for label, method, keep in COLUMNS:
        est = cap.estimate(shape, scenario(method, keep, parallel=on(8, "fsdp")))
        assert metrics[label] == gb(est.peak_bytes)
        for term, n in est.breakdown.items():          # the sharded terms too (gathered units, buffers)
            assert in_gb.loc[term.replace("_", " "), f"{label} [GB]"] == round(n / 1e9, 3)
    assert est.breakdown["all_gather_buffers"] > 0
    assert "per device (8 × A100 80GB, FSDP full shard)" in at.title[0].value
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    title = spec["layout"]["title"]["text"].replace("<br>", " ")
    subtitle = spec["layout"]["title"]["subtitle"]["text"].replace("<br>", " ")
    assert "per device (8 × A100 80GB, FSDP full shard)" in title
    for part in ("per device, 8 × A100 80GB, FSDP full shard", "batch 8 per device", "context 512",
                 "budget 80.00 GB per device usable on A100 80GB"):                 # the whole scenario, to its end
        assert part in subtitle, part
    assert "per device" in spec["layout"]["yaxis"]["title"]["text"]

    # The link carries the devices; a new session opens on them (Memory vs context here).
    params = _scenario.url_params(at.session_state["scenario"])
    assert params == {"device": A100, "devices": "8", "sharding": "fsdp"}
    again = open_page("memory_vs_context", query=params, opened=["open_numbers"])
    assert_clean(again)
    assert again.number_input(key="w_devices").value == 8 and again.selectbox(key="w_sharding").value == "fsdp"
    assert "per device (8 × A100 80GB, FSDP full shard)" in again.title[0].value
    point = again.dataframe[0].value.query("row == 'Conventional BP' and context == 2048").iloc[0]
    bp = cap.estimate(shape, scenario("bp", seq=2048, parallel=on(8, "fsdp"))).peak_bytes
    mezo = cap.estimate(shape, scenario("mezo", seq=2048, parallel=on(8, "fsdp"))).peak_bytes
    assert (point["BP [GB]"], point["MeZO [GB]"]) == (round(bp / 1e9, 3), round(mezo / 1e9, 3))
    spec = json.loads(again.get("plotly_chart")[0].proto.spec)
    assert "per device (8 × A100 80GB, FSDP full shard)" in spec["layout"]["title"]["text"].replace("<br>", " ")
    assert "per device, 8 × A100 80GB, FSDP full shard" in spec["layout"]["title"]["subtitle"]["text"].replace("<br>", " ")


def test_optimizer_offload_shows_the_host_memory():
    query = {"device": A100, "devices": "8", "sharding": "fsdp", "offload": "1", "mixed": "1"}
    at = open_page("calculator", query=query)
    assert_clean(at)
    shape = cap.load_preset("llama-2-7b")
    metrics = {m.label: m.value for m in at.metric}
    for label, method, keep in COLUMNS:
        est = cap.estimate(shape, scenario(method, keep, mixed_precision=True, parallel=on(8, "fsdp", True)))
        assert est.host_bytes > 0
        assert metrics[label] == gb(est.peak_bytes)
        assert metrics[f"{label}: host"] == _format.size_text(est.host_bytes)
    host = at.dataframe[1].value                         # after the device's terms
    assert host.loc["total (peak)", "BP [GB]"] == round(est.host_bytes / 1e9, 3)
    assert "per device (8 × A100 80GB, FSDP full shard)" in at.title[0].value
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "optimizer offloaded to the host" in spec["layout"]["title"]["text"].replace("<br>", " ")


@pytest.mark.parametrize("query,parallel,button,fixed", [
    ({"devices": "8"}, dict(devices=8, sharding="none"), "Shard over 8 devices", {"sharding": "fsdp"}),
    ({"devices": "8", "sharding": "ddp", "offload": "1"}, dict(devices=8, sharding="ddp", offload_optimizer=True),
     "Turn optimizer offload off", {"offload": False}),
    ({"devices": "4", "sharding": "zero2", "accum": "4"}, dict(devices=4, sharding="zero2"),
     "Use 1 micro-batch", {"accum": 1}),
])
def test_a_combination_capacity_refuses_is_a_message_with_a_way_out(query, parallel, button, fixed):
    at = open_page("calculator", query=query)
    assert_clean(at)
    accum = int(query.get("accum", 1))
    with pytest.raises(ValueError) as refused:        # capacity's own words, whatever they are
        cap.estimate(cap.load_preset("llama-2-7b"),
                     scenario("bp", loop=cap_scenario.loop_preset(cap_scenario.DEFAULT_LOOP, grad_accum=accum),
                              parallel=cap.Parallel(**parallel)))
    assert shown(_format.md(refused.value)) in messages(at)
    assert not at.metric                               # no figures for a refused scenario
    next(b for b in at.button if b.label.startswith(button)).click().run()
    assert_clean(at)
    assert {k: at.session_state["scenario"][k] for k in fixed} == fixed
    assert at.metric                                   # answered now


def test_sharding_on_one_device_is_answered_with_a_note():
    at = open_page("calculator", query={"sharding": "fsdp"})
    assert_clean(at)
    assert "one-rank group" in messages(at, "info")
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("bp", parallel=on(1, "fsdp")))
    assert {m.label: m.value for m in at.metric}["BP"] == gb(est.peak_bytes)


def test_bad_device_link_parameters_are_reported_and_ignored():
    at = open_page("calculator", query={"devices": "0", "sharding": "zero9", "offload": "maybe"})
    assert_clean(at)
    for part in ("devices=0", "sharding=zero9", "offload=maybe"):
        assert part in messages(at)
    s = at.session_state["scenario"]
    assert (s["devices"], s["sharding"], s["offload"]) == (1, "none", False)


def devices_needed_methods(parallel, offloaded, offload_label="BP (adamw), optimizer offloaded"):
    return {"MeZO": scenario("mezo", parallel=parallel), "BP (adamw)": scenario("bp", parallel=parallel),
            "BP checkpointed (L'/L=0.25)": scenario("bp", KEEP, parallel=parallel),
            offload_label: scenario("bp", parallel=offloaded)}


def assert_devices_needed(table, expected):
    for row in expected:
        for label, answer in row["methods"].items():
            cell = table.loc[row["model"], label]
            if answer is None:
                assert cell == f"more than {max(cap.DEVICE_COUNTS)}", (row["model"], label, cell)
                continue
            n = answer["devices"]
            assert cell.startswith(f"{n} device{'s' if n > 1 else ''} · {_format.size_text(answer['peak_bytes'])}")
            assert (f"host {_format.size_text(answer['host_bytes'])}" in cell) == (answer["host_bytes"] > 0)


def test_what_fits_devices_needed_is_capacitys_table():
    at = open_page("what_fits", query={"device": A100, "devices": "8", "sharding": "fsdp", "family": "OPT"},
                   opened=["open_devices_needed"])
    assert_clean(at)
    methods = devices_needed_methods(on(8, "fsdp"), on(2, "fsdp", True))
    models = {name: cap.load_preset(name) for name in cap.families()["OPT"]}
    expected = cap.devices_needed_table(models, methods, a100_budget())
    table = at.dataframe[1].value
    assert list(table.index) == list(models)
    assert_devices_needed(table, expected)
    counts = {a["devices"] if a else None for row in expected for a in row["methods"].values()}
    assert len(counts) > 2                               # the view separates the methods
    # The largest preset of each family, and one device without sharding in the sidebar
    # (FSDP full shard from two devices, capacity's on_devices).
    at.radio(key="w_dn_models").set_value("largest").run()
    at.number_input(key="w_devices").set_value(1).run()
    at.selectbox(key="w_sharding").set_value("none").run()
    assert_clean(at)
    largest = {max(names, key=lambda n: cap.parameter_count(cap.load_preset(n))) for names in cap.families().values()}
    models = {name: cap.load_preset(name) for names in cap.families().values() for name in names if name in largest}
    methods = devices_needed_methods(cap.Parallel(), on(2, "fsdp", True),
                                     "BP (adamw), optimizer offloaded, FSDP full shard")   # the sidebar has none
    expected = cap.devices_needed_table(models, methods, a100_budget())
    table = at.dataframe[1].value
    assert set(table.index) == largest
    assert_devices_needed(table, expected)
    assert _scenario.url_params(at.session_state["scenario"])["dn_models"] == "largest"


def test_the_devices_needed_csv_carries_capacitys_numbers():
    from ui import _devices
    methods = devices_needed_methods(on(8, "zero2"), on(2, "zero2", True))
    models = {name: cap.load_preset(name) for name in ("opt-6.7b", "opt-66b")}
    expected = cap.devices_needed_table(models, methods, a100_budget())
    data = _devices.data(expected, list(methods))
    assert len(data) == len(models) * len(methods)
    for row in expected:
        for label, answer in row["methods"].items():
            line = data[(data["model"] == row["model"]) & (data["method"] == label)].iloc[0]
            if answer is None:
                assert line.isna()["devices"] and "more than" in line["note"]
            else:
                assert (line["devices"], line["sharding"]) == (answer["devices"], answer["sharding"])
                assert line["peak_bytes_per_device"] == answer["peak_bytes"]
                assert line["peak per device [GiB]"] == answer["peak_bytes"] / 2**30
                assert line["host_bytes_per_device"] == answer["host_bytes"]


def test_a_model_capacity_refuses_is_a_note_in_the_devices_needed_table():
    at = open_page("what_fits", query={"family": "GPT-2", "seq": "2048", "model": "llama-2-7b"},
                   opened=["open_devices_needed"])
    assert_clean(at)
    table = at.dataframe[1].value
    with pytest.raises(ValueError) as refused:
        cap.estimate(cap.load_preset("gpt2"), scenario("mezo", seq=2048))
    assert table.loc["gpt2", "MeZO"] == f"n/a: {refused.value}"


def test_validate_says_it_runs_one_device():
    at = open_page("validate", query={"devices": "8", "sharding": "fsdp"})
    assert_clean(at)
    assert "--devices 8 --sharding fsdp" in messages(at, "info")

# --- background work -------------------------------------------------------------------

def test_one_sessions_background_work_does_not_block_another():
    import math
    slow, quick = _background.Worker(), _background.Worker()
    slow.ask({_background.call_key(time.sleep, (60,)): (time.sleep, (60,))})
    key = _background.call_key(math.factorial, (20,))
    start = time.time()
    quick.ask({key: (math.factorial, (20,))})
    quick.wait([key], 20)
    assert _background._known(key) == ("ok", math.factorial(20)) and time.time() - start < 20
    # A new question ends the slow worker's stale work at once.
    proc = slow._proc
    slow.ask({key: (math.factorial, (20,))})
    proc.join(timeout=5)
    assert not proc.is_alive()
    quick._stop()


def test_a_process_with_background_work_exits_without_waiting_for_it():
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "if __name__ == '__main__':\n"
            "    from ui import _background\n"
            "    w = _background.Worker()\n"
            "    w.ask({_background.call_key(time.sleep, (120,)): (time.sleep, (120,))})\n"
            "    print(w._proc.pid, flush=True)\n") % str(ROOT)
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.time() - start < 30
    pid = int(done.stdout.split()[-1])
    deadline = time.time() + 5
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


# --- the Validate page, with stand-in engines written by the tests ------------------

FAKE_ENGINE = r'''
import json, os, sys, time
argv = sys.argv[1:]
if "--help" in argv:
    print("usage: validate --preset NAME --method M ..."); sys.exit(0)
mode = argv[0]
print(json.dumps({"event": "progress", "step": 0, "total": 3, "message": "loading torch and transformers"}),
      file=sys.stderr, flush=True)
if mode == "slowstart":
    time.sleep(60)
for i in range(3):
    print(json.dumps({"event": "progress", "step": i + 1, "total": 3, "message": "step"}), file=sys.stderr, flush=True)
if mode == "fail":
    print("error: CUDA requested but not available `![x](http://127.0.0.1:9/p.png)`", file=sys.stderr); sys.exit(3)
if mode == "oom":
    print(json.dumps({"oom": True, "message": "out of memory at step 2", "measured_peak_bytes": None,
                      "predicted_peak_bytes": 9_000_000_000, "error_pct": None,
                      "breakdown": {"measured": None, "predicted": {"weights": 9_000_000_000}}, "device": "cuda"}))
    print("error: out of memory at step 2", file=sys.stderr); sys.exit(5)
if mode == "sleep":
    time.sleep(60)
if mode == "abort":
    os.abort()
cfg = argv[argv.index("--config") + 1] if "--config" in argv else None
result = {"measured_peak_bytes": 2_000_000_000, "predicted_peak_bytes": 2_100_000_000, "error_pct": -0.001,
          "breakdown": {"measured": {"weights": 1_500_000_000, "activations": 500_000_000},
                        "predicted": {"weights": 1_500_000_000, "activations": 600_000_000},
                        "comparable": {"measured": {"weights": 1_500_000_000, "activations_and_temporaries": 500_000_000},
                                       "predicted": {"weights": 1_500_000_000, "activations_and_temporaries": 600_000_000}}},
          "losses": [2.0, 1.9], "step_seconds": [0.1, 0.1], "device": "cpu", "argv": argv,
          "config_seen": open(cfg).read() if cfg else None, "parent": os.environ.get("CAPACITY_PARENT_PID")}
print("some log line")
print(json.dumps(result))
'''


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """Point the runner at a stand-in engine; `mode` (ok, fail, sleep, ...) is its first argument."""
    script = tmp_path / "engine.py"
    script.write_text(FAKE_ENGINE)

    def use(mode="ok"):
        monkeypatch.setattr(_runner, "ENGINE", [sys.executable, str(script), mode])
        monkeypatch.setattr(_runner, "ENGINES", ([sys.executable, str(script), mode],))
        _runs.forget_engine_check()
    yield use
    _runs.forget_engine_check()


def wait_until_finished(at, limit_s=30):
    deadline = time.time() + limit_s
    while at.session_state["validate_run"].running and time.time() < deadline:
        time.sleep(0.1)
    at.run()


def test_validate_without_an_engine_says_so(monkeypatch):
    missing = [sys.executable, "-c", "import sys; sys.exit('No module named capacity.validation')"]
    monkeypatch.setattr(_runner, "ENGINE", missing)
    monkeypatch.setattr(_runner, "ENGINES", (missing,))
    _runs.forget_engine_check()
    try:
        at = open_page("validate")
    finally:
        _runs.forget_engine_check()
    assert not at.exception
    assert "not available" in messages(at) and "capacity.validation" in messages(at)
    assert at.button[0].disabled


def test_validate_runs_the_engine_and_keeps_the_history_across_a_reload(fake_engine, history_file):
    fake_engine("ok")
    at = open_page("validate")
    assert_clean(at)
    assert "auto will run on" in captions(at)
    at.button[0].click().run()
    wait_until_finished(at)
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Measured peak"] == "2.00 GB" and metrics["Predicted peak"] == "2.10 GB"
    assert metrics["Error"] == "0.00 %"                    # -0.001 % is not "-0.00 %"
    assert "auto chose cpu" in captions(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    assert argv[argv.index("--preset") + 1] == "llama-2-7b" and argv[argv.index("--batch") + 1] == "8"
    assert argv[argv.index("--device") + 1] == "auto" and argv[argv.index("--timeout") + 1] == "300"
    assert argv[argv.index("--attention") + 1] == "sdpa"
    assert argv[argv.index("--loop") + 1] == cap_scenario.DEFAULT_LOOP and argv[argv.index("--grad-accum") + 1] == "1"
    assert "--optimizer-impl" not in argv and "--hold-outputs" not in argv and "--drop-outputs" not in argv
    breakdown = at.dataframe[0].value.set_index("term")
    assert breakdown.loc["activations and temporaries", "predicted [GB]"] == 0.6
    at.button[0].click().run()          # a second run: two rows in the history
    wait_until_finished(at)
    assert len(at.dataframe[1].value) == 2
    reloaded = open_page("validate")    # a reload is a new session: the runs are still there
    assert len(reloaded.dataframe[1].value) == 2 and history_file.is_file()


def test_an_uploaded_model_runs_under_its_own_name_and_its_folder_is_removed(fake_engine):
    fake_engine("ok")
    at = open_page("validate")
    text = json.dumps({**TINY, "_name_or_path": "acme/tiny-gpt2"}).encode()
    at.file_uploader[0].set_value(("config.json", text, "application/json")).run()
    at.button[0].click().run()
    wait_until_finished(at)
    entry = _runs.load_history()[-1]
    argv = entry["result"]["argv"]
    path = Path(argv[argv.index("--config") + 1])
    assert path.name == "config.json" and path.parent.name == "acme-tiny-gpt2"
    assert json.loads(entry["result"]["config_seen"]) == json.loads(text)
    assert not path.exists() and not path.parent.parent.exists()          # removed when the run ended
    assert entry["run"].startswith("mezo · acme/tiny-gpt2 (gpt2, ")


def test_a_failed_run_is_a_message_shown_literally(fake_engine):
    fake_engine("fail")
    at = open_page("validate")
    at.button[0].click().run()
    wait_until_finished(at)
    assert not at.exception
    body = at.error[0].value
    assert shown(body) == "The run failed: CUDA requested but not available `![x](http://127.0.0.1:9/p.png)`"
    assert "\\`" in body and "\\!" in body


def test_the_run_shows_a_live_stage_while_torch_loads(fake_engine):
    fake_engine("slowstart")
    at = open_page("validate")
    at.button[0].click().run()
    try:
        time.sleep(1.5)
        at.run()
        bar = at.get("progress")[0]
        assert "loading torch and transformers" in shown(bar.proto.text) and "last time" in shown(bar.proto.text)
        first = bar.proto.value
        time.sleep(1.5)
        at.run()
        assert at.get("progress")[0].proto.value > first > 0          # the bar moves while torch loads
    finally:
        at.session_state["validate_run"].cancel()


def test_checkpointed_bp_passes_the_sidebar_ratio(fake_engine):
    fake_engine("ok")
    at = open_page("validate")
    at.selectbox(key="w_v_method").set_value("bp").run()
    at.button[0].click().run()
    wait_until_finished(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    assert argv[argv.index("--method") + 1] == "bp" and argv[argv.index("--keep") + 1] == "1"
    at.selectbox(key="w_v_method").set_value("bp checkpointed").run()
    at.button[0].click().run()
    wait_until_finished(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    assert argv[argv.index("--method") + 1] == "bp" and argv[argv.index("--keep") + 1] == "0.25"


def test_out_of_memory_is_a_result(fake_engine):
    fake_engine("oom")
    at = open_page("validate")
    at.button[0].click().run()
    wait_until_finished(at)
    assert not at.exception
    assert "out of memory at step 2" in messages(at, "error")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Measured peak"] == "n/a" and metrics["Predicted peak"] == "9.00 GB"


def test_cancel_time_limit_and_server_stop_end_the_child(fake_engine, monkeypatch, tmp_path):
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
    folder = tmp_path / "upload"
    folder.mkdir()
    run = _runner.EngineRun([], time_limit_s=30, label="server stops", cleanup=(str(folder),))
    time.sleep(0.5)
    _runner.end_all_runs()         # what the exit handler does when the server stops
    assert run.status == "cancelled" and run._proc.poll() is not None and not folder.exists()


@pytest.mark.skipif(not _export.export_available(), reason="kaleido needs Chromium (/usr/bin/chromium) to draw files")
def test_figure_export_draws_png_and_svg():
    import plotly.graph_objects as go
    fig = _export.style(go.Figure(go.Bar(x=["a"], y=[1])), "t <b>x</b>", "batch 8 · context 512")
    assert _export.figure_bytes(fig, "png").startswith(b"\x89PNG")
    svg = _export.figure_bytes(fig, "svg")
    assert b"<svg" in svg[:200] and b"batch 8" in svg
    assert b"&#60;b&#62;x" in svg and b"<b>" not in svg        # the title's markup is text, not markup


# --- the model's context limit and quantized configs (capacity refuses; the app says so) ---

def test_a_context_beyond_a_learned_position_table_is_a_message_with_a_way_out():
    at = open_page("calculator", query={"model": "gpt2", "seq": "4096"})
    assert not at.exception and not at.error
    assert "learned position table of 1,024 positions" in messages(at)
    at.button[0].click().run()                       # "Use a context of 1,024 tokens"
    assert at.session_state["scenario"]["seq"] == 1024
    est = cap.estimate(cap.load_preset("gpt2"), scenario("mezo", seq=1024))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)


def test_a_rope_context_beyond_its_trained_length_is_answered_with_a_note():
    at = open_page("calculator", query={"seq": "8192"})
    assert_clean(at)
    note = cap.context_note(cap.load_preset("llama-2-7b"), 8192)
    assert note and shown(_format.md(note)) in " ".join(shown(i.value) for i in at.info)
    est = cap.estimate(cap.load_preset("llama-2-7b"), scenario("mezo", seq=8192))
    assert {m.label: m.value for m in at.metric}["MeZO"] == gb(est.peak_bytes)


def test_memory_vs_context_stops_at_a_learned_position_table():
    at = open_page("memory_vs_context", query={"model": "opt-1.3b"}, opened=["open_numbers"])
    assert_clean(at)
    assert at.dataframe[0].value["context"].max() == 2048
    assert "2,048 positions" in " ".join(shown(i.value) for i in at.info)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(shape_["x0"] == 2048 for shape_ in spec["layout"]["shapes"])


def test_a_quantized_config_is_refused_with_the_reason():
    config = {**TINY, "quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}
    at = open_page("calculator")
    at.file_uploader[0].set_value(("q.json", json.dumps(config).encode(), "application/json")).run()
    assert not at.exception
    assert "quantization_config" in messages(at, "error")
    assert at.selectbox(key="w_model").value == "llama-2-7b"


# --- properties over arbitrary link parameters and uploads (hypothesis) --------------------

from hypothesis import HealthCheck, given, settings, strategies as hst  # noqa: E402

JSON_VALUES = hst.recursive(
    hst.none() | hst.booleans() | hst.integers(-2**70, 2**70) | hst.floats(allow_nan=False) | hst.text(max_size=20),
    lambda inner: hst.lists(inner, max_size=4) | hst.dictionaries(hst.text(max_size=12), inner, max_size=4),
    max_leaves=12)
CONFIG_KEYS = ["model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
               "intermediate_size", "vocab_size", "hidden_act", "activation_function", "max_position_embeddings",
               "_name_or_path", "quantization_config", "tie_word_embeddings", "num_key_value_heads"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=hst.sampled_from(sorted(_scenario.PARAMS)), text=hst.text(max_size=60))
def test_any_link_parameter_is_read_or_refused_with_a_message(key, text):
    try:
        value = _scenario.parse_param(key, text)
    except ValueError as err:
        assert str(err)
    else:
        assert type(value) is type(_scenario.DEFAULTS[key]) or isinstance(_scenario.DEFAULTS[key], float)
    out = _format.md(text)
    assert shown(out) == " ".join(text.split())[:_format.MAX_SHOWN_CHARS] + ("…" if len(" ".join(text.split())) >
                                                                            _format.MAX_SHOWN_CHARS else "")
    assert not re.search(r"[!-/:-@\[-`{-~]", re.sub(r"\\[!-/:-@\[-`{-~]", "", out.replace("\u200b", "")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packed=hst.text(max_size=200))
def test_any_link_config_is_read_or_refused(packed):
    try:
        data = _scenario.unpack_config(packed)
    except ValueError as err:
        assert str(err)
    else:
        assert len(data) <= _scenario.UPLOAD_LIMIT_BYTES


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=hst.dictionaries(hst.sampled_from(CONFIG_KEYS) | hst.text(max_size=10), JSON_VALUES, max_size=10),
       model_type=hst.sampled_from(["gpt2", "llama", "opt", "mistral", "qwen2", "gemma", "gpt_neox", "phi", "x"]))
def test_any_uploaded_config_is_a_model_or_a_message(config, model_type):
    config.setdefault("model_type", model_type)
    data = json.dumps(config).encode()
    shape, name, error = _scenario.read_upload("up.json", data)
    assert (shape is None) == (name is None) == (error is not None)
    if shape is not None:
        assert name.endswith(")") and len(name) < 200 and "\n" not in name
        assert _scenario.unpack_config(_scenario.pack_config(data)) == json.dumps(
            json.loads(data), separators=(",", ":"), ensure_ascii=False).encode()


def test_a_run_is_capped_in_host_memory_and_watches_the_server(fake_engine, monkeypatch):
    from capacity.validation import host
    fake_engine("ok")
    monkeypatch.setattr(_runs, "gpu_seen", lambda: False)
    monkeypatch.setattr(host, "available_bytes", lambda cap=None: 8 * 10**9)
    at = open_page("validate")
    assert "3/4 of the memory available now" in captions(at)
    at.button[0].click().run()
    wait_until_finished(at)
    result = _runs.load_history()[-1]["result"]
    argv = result["argv"]
    assert argv[argv.index("--max-memory") + 1] == f"{6 * 10**9}B"       # 3/4 of 8 GB
    assert result["parent"] == str(__import__("os").getpid())           # the engine ends with the server
    at.number_input(key="w_v_mem_gb").set_value(2.0).run()
    at.button[0].click().run()
    wait_until_finished(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    assert argv[argv.index("--max-memory") + 1] == f"{2 * 10**9}B"


def test_a_run_that_aborts_under_its_cap_is_out_of_memory(fake_engine, monkeypatch):
    fake_engine("abort")
    monkeypatch.setattr(_runs, "gpu_seen", lambda: False)
    at = open_page("validate")
    at.button[0].click().run()
    wait_until_finished(at)
    assert "out of memory under its cap" in messages(at, "error")


def test_the_loop_settings_reach_the_engine(fake_engine):
    fake_engine("ok")
    at = open_page("validate", query={"loop": "plain", "opt_impl": "forloop", "hold": "dropped", "accum": "2"})
    at.button[0].click().run()
    wait_until_finished(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    assert argv[argv.index("--loop") + 1] == "plain" and argv[argv.index("--grad-accum") + 1] == "2"
    assert argv[argv.index("--optimizer-impl") + 1] == "forloop" and "--drop-outputs" in argv
    from capacity import cli
    args = cli.build_parser().parse_args(["validate", *argv[1:argv.index("--timeout")]])   # as the engine reads them
    assert (args.loop, args.optimizer_impl, args.hold_outputs, args.grad_accum) == ("plain", "forloop", False, 2)


# --- fine-tuning: what is trained and how the base is stored (issue 10) --------------------

from capacity import inverse  # noqa: E402


def peft_defaults_in_peft_source() -> dict:
    """peft's LoraConfig field defaults, read from the installed peft's source (no import:
    importing peft loads torch, seconds on this machine)."""
    import ast
    import importlib.util
    origin = Path(importlib.util.find_spec("peft").origin).parent / "tuners" / "lora" / "config.py"
    tree = ast.parse(origin.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "LoraConfig")
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call):
            default = next((k.value for k in node.value.keywords if k.arg == "default"), None)
            if isinstance(default, ast.Constant):
                out[node.target.id] = default.value
    return out


def peft_scenario(method, keep=1.0, peft=None, **changes):
    return scenario(method, keep, peft=peft or cap_scenario.Peft(), **changes)


def metric_values(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_finetuning_defaults_are_peft_loraconfigs():
    peft = peft_defaults_in_peft_source()
    at = open_page("calculator", query={"peft": "lora"})
    assert_clean(at)
    assert at.number_input(key="w_lora_r").value == peft["r"]
    assert at.number_input(key="w_lora_alpha").value == peft["lora_alpha"]
    assert at.number_input(key="w_lora_dropout").value == peft["lora_dropout"]
    assert peft["target_modules"] is None and at.text_input(key="w_lora_targets").value == ""   # the model type's
    # ... and what the page computes is capacity's estimate for peft's defaults
    pf = cap_scenario.Peft(method="lora", lora_rank=peft["r"], lora_alpha=peft["lora_alpha"],
                           lora_dropout=peft["lora_dropout"])
    est = cap.estimate(cap.load_preset("llama-2-7b"), peft_scenario("mezo", peft=pf))
    assert metric_values(at)[f"MeZO-LoRA r={peft['r']}"] == gb(est.peak_bytes)


def test_the_finetuning_section_reaches_every_column_the_headline_and_the_link():
    at = open_page("calculator")
    assert at.selectbox(key="w_peft").value == "none"             # full fine-tuning unless asked
    at.selectbox(key="w_peft").set_value("lora").run()
    at.number_input(key="w_lora_r").set_value(16).run()
    at.selectbox(key="w_wbits").set_value("4").run()
    at.selectbox(key="w_quant").set_value("fp4").run()
    assert_clean(at)
    pf = cap_scenario.Peft(method="lora", lora_rank=16, weights_bits=4, quant="fp4")
    shape = cap.load_preset("llama-2-7b")
    labels = ["Inference", "MeZO-LoRA r=16", "BP-LoRA r=16", "BP-LoRA r=16 checkpointed (L'/L=0.25)"]
    metrics = metric_values(at)
    for label, (_, method, keep) in zip(labels, COLUMNS):
        assert metrics[label] == gb(cap.estimate(shape, peft_scenario(method, keep, pf)).peak_bytes), label
    est = cap.estimate(shape, peft_scenario("mezo", peft=pf))
    assert metrics["Trainable parameters"] == _format.params_text(est.trainable_params)
    assert 0 < est.trainable_params < est.params
    headline = shown(at.markdown[0].value)
    assert "MeZO-LoRA r=16" in headline and "BP-LoRA r=16" in headline and "4-bit FP4 base" in headline
    assert f"Trains **{est.trainable_params:,}** of {est.params:,}" in captions(at)
    # The breakdown separates the frozen base, the trainable weights, their gradients and states.
    table = at.dataframe[0].value
    bp = cap.estimate(shape, peft_scenario("bp", peft=pf))
    for term, row in (("weights", "base weights (frozen)"), ("trainable_weights", "trainable weights"),
                      ("gradients", "gradients (trainable weights)"),
                      ("optimizer_states", "optimizer states (trainable weights)")):
        assert table.loc[row, "BP-LoRA r=16 [GB]"] == pytest.approx(bp.breakdown.get(term, 0) / 1e9, abs=1e-3)
    # The link carries it, and a new session opened from it shows the same.
    params = _scenario.url_params(at.session_state["scenario"])
    assert params == {"peft": "lora", "lora_r": "16", "wbits": "4", "quant": "fp4"}
    again = open_page("what_fits", query=params)
    assert_clean(again)
    assert (again.selectbox(key="w_peft").value, again.number_input(key="w_lora_r").value,
            again.selectbox(key="w_wbits").value, again.selectbox(key="w_quant").value) == ("lora", 16, "4", "fp4")
    assert "MeZO-LoRA r=16" in shown(again.markdown[0].value)


def test_qlora_is_one_click_and_old_links_train_every_parameter():
    at = open_page("calculator", query={"batch": "2"})          # a link from before the section
    assert at.selectbox(key="w_peft").value == "none" and at.selectbox(key="w_wbits").value == "16"
    assert metric_values(at)["MeZO"] == gb(cap.estimate(cap.load_preset("llama-2-7b"),
                                                         peft_scenario("mezo", batch=2)).peak_bytes)
    next(b for b in at.button if b.label.startswith("QLoRA")).click().run()
    assert_clean(at)
    s = at.session_state["scenario"]
    assert (s["peft"], s["wbits"], s["quant"], s["dquant"]) == ("lora", "4", "nf4", True)
    assert "(QLoRA)" in " ".join(metric_values(at)) and "4-bit NF4 base (double quantization)" in \
        shown(at.markdown[0].value)


def test_every_page_names_the_variant_and_figures_carry_it():
    query = {"peft": "lora", "wbits": "4", "dquant": "1", "model": "gpt2"}
    for page in PAGES:
        at = open_page(page, query=query)
        assert_clean(at)
        assert "MeZO-LoRA r=8" in shown(at.markdown[0].value), page
        for chart in at.get("plotly_chart"):
            spec = json.loads(chart.proto.spec)
            title = spec["layout"]["title"]
            text = (title["text"] + " " + title.get("subtitle", {}).get("text", "")).replace("<br>", " ")
            assert "LoRA r=8" in text and "4-bit NF4 base" in text, (page, text)


def test_what_fits_shows_every_way_of_fine_tuning_as_capacity_answers():
    query = {"peft": "lora", "lora_r": "16", "device": "Jetson Orin Nano 8GB", "model": "gpt2"}
    at = wait_for_background(open_page("what_fits", query=query, opened=["open_variant_families"]))
    assert_clean(at)
    budget = cap.load_device("Jetson Orin Nano 8GB").usable_memory_bytes
    base = peft_scenario("mezo", peft=cap_scenario.Peft(method="lora", lora_rank=16))
    table = next(d.value for d in at.dataframe if list(d.value.columns) == list(inverse.VARIANTS))
    largest = {}                                    # variant: (params, cell) of the largest preset of any family
    for family in cap.families():
        for row in inverse.fits_table(budget, base, family=family)["rows"]:
            name = row.get("largest_preset")
            expected = (f"n/a: {row['error']}" if "error" in row else "none fits" if name is None else
                        f"{name} ({_format.params_text(row['largest_preset_params'])}, "
                        f"{_format.size_text(row['largest_preset_peak_bytes'])})")
            assert table.loc[family, row["variant"]] == expected, (family, row["variant"])
            if name and row["largest_preset_params"] >= largest.get(row["variant"], (0, ""))[0]:   # ties: the later family, as the page
                largest[row["variant"]] = (row["largest_preset_params"], expected)
    scaled = inverse.fits_table(budget, base, shape=cap.load_preset("gpt2"))
    ratios = next(d.value for d in at.dataframe if d.value.index.name == "MeZO variant")
    assert scaled["ratios"]
    for r in scaled["ratios"]:
        assert ratios.loc[r["mezo"], r["bp"]] == pytest.approx(round(r["ratio"], 2))
    summary = next(d.value for d in at.dataframe if "largest preset (any family)" in d.value.columns).set_index("variant")
    assert list(summary.index) == list(inverse.VARIANTS)
    for row in scaled["rows"]:
        assert summary.loc[row["variant"], "largest preset (any family)"] == largest.get(row["variant"],
                                                                                         (0, "none fits"))[1]
        assert summary.loc[row["variant"], "largest shaped like gpt2"] == (
            f"{row['largest_scaled_name']} ({_format.params_text(row['largest_scaled_params'])})")
    downloads = [b.proto.label for b in at.get("download_button")]
    assert "Download the fine-tuning variants (CSV)" in downloads and "Download P_MeZO/P_BP by pairing (CSV)" in downloads
    assert "CPU runs" in captions(at) and "CUDA" in captions(at)    # what the quantized figures were checked against


def test_secondary_tables_are_drawn_only_when_their_expander_is_open():
    """A table in a closed st.expander still costs the browser most of a page load, so the
    secondary ones (ui/_expander.lazy) are computed and drawn only once opened."""
    at = open_page("calculator")
    assert_clean(at)
    assert len(at.dataframe) == 1                                   # the terms at the peak, in one unit
    assert "Every way of fine-tuning side by side" in at.expander[0].label
    at.session_state["open_variants"] = True                        # what opening it sets
    at.run()
    assert_clean(at)
    assert len(at.dataframe) == 2 and "variant" in at.dataframe[1].value.columns
    fits = wait_for_background(open_page("what_fits"))
    closed = len(fits.dataframe)
    for key in ("open_devices_needed", "open_variant_families", "open_device_presets"):
        fits.session_state[key] = True
    fits.run()
    assert_clean(fits)
    assert len(fits.dataframe) == closed + 3


def test_calculator_sets_every_variant_side_by_side():
    at = open_page("calculator", query={"model": "gpt2", "peft": "lora", "lora_targets": "all-linear"},
                   opened=["open_variants"])
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "variant" in d.value.columns).set_index("variant")
    shape = cap.load_preset("gpt2")
    base = peft_scenario("mezo", peft=cap_scenario.Peft(method="lora", lora_targets=("all-linear",)))
    for name in inverse.VARIANTS:
        est = cap.estimate(shape, inverse.variant_scenario(name, base))
        assert table.loc[name, "peak [GB]"] == pytest.approx(est.peak_bytes / 1e9, abs=1e-3)
        assert table.loc[name, "trainable parameters"] == est.trainable_params
        assert table.loc[name, "fits"] == ("yes" if est.peak_bytes <= BUDGET else "no")


@pytest.mark.parametrize("query,words,fix", [
    ({"peft": "lora", "lora_targets": "q_proj,nonsense"}, "nonsense is not a linear", "Use peft's default targets"),
    ({"wbits": "8"}, "quantized base weights are frozen", "Train LoRA adapters on this base"),
    ({"peft": "prefix"}, "prefix tuning with checkpointing", "Use L'/L = 1 (no checkpointing)"),
    ({"peft": "lora", "mixed": "1", "keep": "0.5"}, "under autocast", "Use L'/L = 1 (no checkpointing)"),
    ({"peft": "lora", "wbits": "4", "mixed": "1"}, "over a quantized base", "Turn mixed precision off"),
    ({"peft": "freeze", "top_layers": "99"}, "32 decoder layers", "Train the top layer only"),
    ({"peft": "lora", "wbits": "4", "dtype": "fp32"}, "16-bit dtype", "Use bf16"),
])
def test_an_invalid_finetuning_setting_is_a_message_with_a_way_out(query, words, fix):
    at = open_page("calculator", query=query)
    assert not at.exception
    assert words in messages(at)
    assert not at.metric                                   # no figures for a scenario capacity refuses
    next(b for b in at.button if b.label == fix).click().run()
    assert_clean(at)
    assert at.metric and words not in messages(at)


def test_bad_finetuning_link_values_and_typed_targets_are_refused_with_a_message():
    at = open_page("calculator", query={"peft": "dora", "lora_r": "0", "wbits": "3", "lora_targets": "q_proj;rm -rf",
                                        "lora_dropout": "1.5"})
    assert not at.exception
    text = messages(at)
    for key in ("peft=dora", "lora_r=0", "wbits=3", "lora_dropout=1.5", "lora_targets=q_proj;rm -rf"):
        assert key in text, key
    at = open_page("calculator", query={"peft": "lora"})
    at.text_input(key="w_lora_targets").set_value("q_proj, v_proj").run()
    assert_clean(at)
    assert at.session_state["scenario"]["lora_targets"] == "q_proj,v_proj"
    at.text_input(key="w_lora_targets").set_value("q_proj v_proj$").run()
    assert not at.exception
    assert "Target modules not changed" in messages(at, "error")
    assert at.session_state["scenario"]["lora_targets"] == "q_proj,v_proj"


def test_the_finetuning_settings_reach_the_engine(fake_engine):
    fake_engine("ok")
    at = open_page("validate", query={"model": "gpt2", "peft": "lora", "lora_r": "4", "lora_targets": "c_attn",
                                      "wbits": "4", "dquant": "1", "v_method": "bp"})
    at.button[0].click().run()
    wait_until_finished(at)
    argv = _runs.load_history()[-1]["result"]["argv"]
    from capacity import cli, peft_args
    args = cli.build_parser().parse_args(["validate", *argv[1:argv.index("--timeout")]])   # as the engine reads them
    assert peft_args.peft_from_args(args) == cap_scenario.Peft(method="lora", lora_rank=4, lora_targets=("c_attn",),
                                                               weights_bits=4, quant="nf4", double_quant=True)
