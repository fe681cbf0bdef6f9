"""The GPU table: predicted peak memory against torch.cuda.max_memory_allocated on a real GPU.

Every row is one `python -m capacity validate ... --device cuda` command (ROWS below), run
in this one process so that torch and transformers load once. Each row's JSON result is
appended to a JSON-lines file as soon as it ends, with the command, the versions and the
memory the process still held before it started (a leak would show there).

    python bench/gpu_table.py --out gpu-table.jsonl                  # every group, on a CUDA GPU
    python bench/gpu_table.py --group docs --out a.jsonl             # one group (docs, widening, large,
                                                                     # followup, figure4: not run yet)
    python bench/gpu_table.py --group docs --device trace --only gpt2 # the same commands traced (a dry check)
    python bench/gpu_table.py --report a.jsonl b.jsonl --doc mine.md # a page from your results (the
                                                                     # default page is docs/gpu_table.md)

--budget S stops starting rows after S seconds (the rows not run are listed), so that one
call fits a lease on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "gpu_table.md"
# TinyLlama-1.1B's shape with random weights (the config docs/validation.md gives).
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
            "max_position_embeddings": 2048, "tie_word_embeddings": False}
LLAMA_1B_LONG = {**LLAMA_1B, "max_position_embeddings": 8192}
CONFIGS = {"llama-1.1b.json": LLAMA_1B, "llama-1.1b-8k.json": LLAMA_1B_LONG}

SMALL = "--dtype bf16 --batch 4 --seq 512 --steps 3"
METHODS = ("--method bp --optimizer sgd --keep 1", "--method bp --optimizer sgd --keep 0",
           "--method bp --optimizer adamw --keep 1", "--method bp --optimizer adamw --keep 0", "--method mezo")
L1B = "--config llama-1.1b.json"


def _docs_rows() -> list[str]:
    """docs/validation.md's matrix: 4 models x 5 methods x 2 attentions, bf16, batch 4, seq 512."""
    return [f"{model} {method} --attention {attn} {SMALL}"
            for model in ("--preset gpt2", "--preset gpt2-medium", L1B, "--preset qwen2-0.5b")
            for method in METHODS for attn in ("eager", "sdpa")]


def _widening_rows() -> list[str]:
    """What users run beyond the first round's matrix: loops, precisions, PEFT, quantized bases, families."""
    bp = "--method bp --optimizer adamw"
    rows = [
        # training loops and optimizer implementations (docs/loops.md)
        f"{L1B} {bp} --loop plain --optimizer-impl forloop {SMALL}",
        f"{L1B} {bp} --loop plain --optimizer-impl foreach {SMALL}",
        f"{L1B} {bp} --loop plain --optimizer-impl fused {SMALL}",
        f"{L1B} {bp} --loop trainer --grad-accum 4 --dtype bf16 --batch 1 --seq 512 --steps 3",
        f"{L1B} --method bp --optimizer sgd --loop plain --hold-outputs {SMALL}",
        # precisions
        f"{L1B} {bp} --dtype fp32 --batch 4 --seq 512 --steps 3",
        f"{L1B} {bp} --mixed-precision --dtype bf16 --batch 4 --seq 512 --steps 3",
        f"{L1B} {bp} --mixed-precision --dtype fp16 --batch 4 --seq 512 --steps 3",
        f"{L1B} {bp} --dtype fp16 --attention eager --batch 4 --seq 512 --steps 3",
        f"{L1B} --method inference {SMALL}",
        f"{L1B} --method mezo --dtype fp16 --batch 4 --seq 512 --steps 3",
        # parameter-efficient fine-tuning (docs/peft.md)
        f"{L1B} {bp} --peft lora {SMALL}",
        f"{L1B} {bp} --peft lora --lora-rank 64 --lora-alpha 128 --lora-targets all-linear {SMALL}",
        f"{L1B} {bp} --peft lora --keep 0 {SMALL}",
        f"{L1B} --method mezo --peft lora {SMALL}",
        f"{L1B} {bp} --peft prefix {SMALL}",
        f"{L1B} --method mezo --peft prefix {SMALL}",
        f"{L1B} {bp} --peft freeze --trainable-layers 2 {SMALL}",
        f"{L1B} {bp} --peft lora --weights-bits 4 --quant nf4 {SMALL}",
        f"{L1B} {bp} --peft lora --weights-bits 4 --quant nf4 --double-quant --keep 0 {SMALL}",
        f"{L1B} {bp} --peft lora --weights-bits 8 {SMALL}",
        # long contexts: CUDA's SDPA kernels (flash / memory-efficient) against eager
        f"--config llama-1.1b-8k.json {bp} --attention sdpa --dtype bf16 --batch 1 --seq 4096 --steps 3",
        f"--config llama-1.1b-8k.json {bp} --attention eager --dtype bf16 --batch 1 --seq 4096 --steps 3",
        f"--config llama-1.1b-8k.json --method mezo --attention sdpa --dtype bf16 --batch 1 --seq 8192 --steps 3",
        # today's families
        f"--preset qwen3-0.6b {bp} {SMALL}",
        f"--preset qwen3-0.6b --method mezo {SMALL}",
        f"--preset gemma-3-1b {bp} {SMALL}",
        f"--preset gemma-3-1b {bp} --attention eager --dtype bf16 --batch 1 --seq 2048 --steps 3",
        f"--preset smollm2-360m {bp} {SMALL}",
        f"--preset pythia-410m {bp} {SMALL}",
        f"--preset opt-350m {bp} {SMALL}",
        f"--preset olmo-2-1b {bp} {SMALL}",
        f"--preset phi-3-mini-4k {bp} --peft lora {SMALL}",
        f"--preset olmoe-1b-7b-0924 --method mezo {SMALL}",
        f"--preset olmoe-1b-7b-0924 {bp} --peft lora {SMALL}",
    ]
    return rows


def _large_rows() -> list[str]:
    """Models of 2.7B to 30B: the sizes the MeZO paper's Figure 4 and users' single GPUs are about."""
    return [
        "--preset llama-2-7b --method mezo --dtype bf16 --batch 4 --seq 512 --steps 3",
        "--preset llama-2-7b --method bp --optimizer adamw --peft lora --dtype bf16 --batch 4 --seq 512 --steps 3",
        "--preset llama-2-7b --method bp --optimizer sgd --dtype bf16 --batch 1 --seq 512 --steps 3",
        "--preset llama-3.1-8b --method bp --optimizer adamw --peft lora --weights-bits 4 --quant nf4 "
        "--dtype bf16 --batch 4 --seq 1024 --steps 3",
        "--preset llama-3.1-8b --method bp --optimizer adamw --peft lora --keep 0 --dtype bf16 --batch 8 "
        "--seq 1024 --steps 3",
        "--preset qwen3-8b --method mezo --peft lora --dtype bf16 --batch 8 --seq 512 --steps 3",
        # the MeZO paper's settings: fp32 OPT under fp16 autocast (HF Trainer --fp16), batch 1, ~400 tokens
        "--preset opt-2.7b --method bp --optimizer adam --mixed-precision --dtype fp16 --attention eager "
        "--batch 1 --seq 400 --steps 3",
        "--preset opt-13b --method mezo --dtype fp16 --attention eager --batch 1 --seq 400 --steps 3",
        "--preset opt-30b --method mezo --dtype fp16 --attention eager --batch 1 --seq 400 --steps 3",
        "--preset qwen3-30b-a3b --method mezo --dtype bf16 --batch 1 --seq 512 --steps 3",
    ]


def _followup_rows() -> list[str]:
    """Rows added after the first GPU runs: SDPA's math path on CUDA (fp32 with grouped-query
    heads), fp32 without it, LoRA with explicit targets where peft has no default, and the
    eager + checkpointing rows' unexplained 128 MiB at other settings."""
    return [
        f"{L1B} --method mezo --dtype fp32 --batch 4 --seq 512 --steps 3",
        "--preset qwen3-0.6b --method bp --optimizer adamw --dtype fp32 --batch 4 --seq 512 --steps 3",
        "--preset gpt2 --method bp --optimizer adamw --dtype fp32 --batch 4 --seq 512 --steps 3",
        "--preset phi-3-mini-4k --method bp --optimizer adamw --peft lora --lora-targets qkv_proj,o_proj "
        f"{SMALL}",
        f"--preset olmoe-1b-7b-0924 --method bp --optimizer adamw --peft lora --lora-targets q_proj,v_proj {SMALL}",
        f"{L1B} --method bp --optimizer adamw --keep 0.5 --attention eager {SMALL}",
        f"{L1B} --method bp --optimizer adamw --keep 0 --attention eager --loop plain {SMALL}",
        f"--preset qwen2-0.5b --method bp --optimizer adamw --keep 0 --attention eager --dtype bf16 --batch 1 "
        "--seq 512 --steps 3",
    ]


def _figure4_rows() -> list[str]:
    """The MeZO paper's one-GPU settings (fp32 OPT under fp16 autocast, HF Trainer, batch 1,
    about 400 tokens): Figure 4's prefix row (6.7B fits one 80 GB GPU, 13B does not) and
    Table 22's one-GPU rows. PEFT under autocast over an fp32 model has no prediction yet:
    these rows measure it."""
    amp = "--mixed-precision --dtype fp16 --attention eager --batch 1 --seq 400 --steps 3"
    return [
        f"--preset opt-6.7b --method bp --optimizer adamw --peft prefix {amp}",
        f"--preset opt-13b --method bp --optimizer adamw --peft prefix {amp}",
        f"--preset opt-6.7b --method bp --optimizer adamw --peft lora {amp}",
        f"--preset opt-1.3b --method bp --optimizer adamw {amp}",
        "--preset opt-1.3b --method mezo --dtype fp16 --attention eager --batch 1 --seq 400 --steps 3",
        "--preset opt-2.7b --method mezo --dtype fp16 --attention eager --batch 1 --seq 400 --steps 3",
        "--preset llama-2-7b --method bp --optimizer adamw --peft lora --mixed-precision --dtype bf16 "
        "--batch 4 --seq 512 --steps 3",
    ]


GROUPS = {"docs": _docs_rows, "widening": _widening_rows, "large": _large_rows, "followup": _followup_rows,
          "figure4": _figure4_rows}


def _write_configs(where: Path) -> None:
    for name, cfg in CONFIGS.items():
        (where / name).write_text(json.dumps(cfg))


def _versions() -> dict:
    import torch
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("peft", "accelerate", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except Exception:          # noqa: BLE001 - a missing optional package is recorded as such
            out[name] = None
    out["date"] = time.strftime("%Y-%m-%d")
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_total_bytes"] = torch.cuda.mem_get_info()[1]
    return out


def _release_cuda() -> int:
    """Free what the last row left (cyclic garbage, cached blocks, cuBLAS's per-thread
    workspaces) and return the bytes still allocated: 0 unless a row leaked."""
    import torch
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


LEAKED = 75   # a worker's exit code: memory is still held, start a fresh process


def run_worker(rows: list[str], start: int, device: str, out: Path, deadline: float) -> int:
    """Run rows[start:] in this process, appending one record per row, until the deadline;
    exit LEAKED (before a row) when an earlier row left memory allocated."""
    import torch
    from capacity.cli import main as capacity_main
    versions = _versions()
    for i in range(start, len(rows)):
        row = rows[i]
        if time.time() > deadline:
            return 0
        held = _release_cuda()
        if held and i > start:
            return LEAKED
        argv = ["validate", *row.split(), "--device", device, "--json", "--progress", "none"]
        buf, t0 = io.StringIO(), time.monotonic()
        with contextlib.redirect_stdout(buf):
            try:
                code = capacity_main(argv)
            except Exception as err:   # noqa: BLE001 - a row that breaks is recorded, the table goes on
                code, buf = -1, io.StringIO(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
        lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"error": buf.getvalue()[-2000:]}
        record = {"index": i, "command": "python -m capacity validate " + " ".join(argv[1:]), "row": row,
                  "exit": code, "wall_s": round(time.monotonic() - t0, 2), "held_before_bytes": held,
                  "versions": versions, "result": result}
        if torch.cuda.is_available():
            st = torch.cuda.memory_stats()
            record["allocator_peak"] = {"allocated": st.get("allocated_bytes.all.peak"),
                                        "requested": st.get("requested_bytes.all.peak")}
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        err = result.get("error_pct")
        print(f"[{i + 1}/{len(rows)}] {record['wall_s']:6.1f} s exit {code} "
              f"{'' if err is None else f'{err:+.2f}%'}  {row}"
              + ("" if code == 0 else f"  :: {str(result.get('error') or result.get('message'))[:300]}"),
              flush=True)
    return 0


def run_rows(rows: list[str], argv_rows: list[str], device: str, out: Path, budget_s: float) -> int:
    """Run every row in worker processes (a fresh one after a row that leaks memory, e.g. an
    out-of-memory one); rows not started within the budget are listed."""
    import subprocess
    deadline = time.time() + budget_s
    done = lambda: len(out.read_text().splitlines()) if out.exists() else 0  # noqa: E731
    before = done()
    start = 0
    while start < len(rows) and time.time() < deadline:
        code = subprocess.call([sys.executable, __file__, "--worker", str(start), "--deadline", str(deadline),
                                "--device", device, "--out", str(out), *argv_rows])
        ran = done() - before
        if ran == start and code not in (0, LEAKED):   # the worker died inside a row: record it, go on
            with out.open("a") as f:
                f.write(json.dumps({"index": start, "row": rows[start], "exit": code, "held_before_bytes": 0,
                                    "versions": {}, "result": {"error": f"worker exited {code}"}}) + "\n")
            ran += 1
        if code == 0 and ran == start:
            break
        start = ran
    for row in rows[start:]:
        print(f"not run (budget {budget_s:g} s): {row}", flush=True)
    return 1 if start < len(rows) else 0


# ---------------------------------------------------------------- report

def _gb(n) -> str:
    return "" if n is None else f"{n / 1e9:.3f}"


def _pct(x) -> str:
    return "" if x is None else f"{x:+.2f}%"


def row_model(row: str, result: dict, config_dir: Path):
    """(shape, scenario) that `validate <row> --device cuda` builds (target cuda)."""
    from capacity.cli import build_parser
    from capacity.validation.cli import _read_source, scenario_from_args
    for name in CONFIGS:
        row = row.replace(f"--config {name}", f"--config {config_dir / name}")
    args = build_parser().parse_args(["validate", *row.split(), "--device", "cuda"])
    scenario = scenario_from_args(args)
    if "moe" in result:   # the routing the prediction states (validate.compare does the same)
        from dataclasses import replace
        scenario = replace(scenario, routing=result["moe"]["predicted_routing"])
    return _read_source(args)[0], scenario


def predictions(row: str, result: dict, config_dir: Path):
    """(capacity.estimate, capacity.step_time_seconds on the H100 80GB preset: the roofline,
    a lower bound) for a recorded row with the current model, target cuda; None, None when
    capacity refuses the scenario."""
    import capacity
    from capacity.compute import step_time_seconds
    from capacity.presets import load_device
    shape, scenario = row_model(row, result, config_dir)
    try:
        return capacity.estimate(shape, scenario), step_time_seconds(shape, scenario, load_device("H100 80GB"))
    except ValueError:
        return None, None


def load_records(paths: list[Path]) -> list[dict]:
    """The recorded rows, each with `now`: the current prediction and its error."""
    import tempfile
    records = [json.loads(ln) for p in paths for ln in p.read_text().splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory() as d:
        _write_configs(Path(d))
        for r in records:
            res, measured = r["result"], r["result"].get("measured_peak_bytes")
            est, roof = predictions(r["row"], res, Path(d)) if r["exit"] == 0 and measured else (None, None)
            r["now"] = None if est is None else {
                "predicted": est.peak_bytes, "phase": est.phase,
                "error_pct": 100.0 * (est.peak_bytes - measured) / measured, "roofline_s": roof}
    return records


def summary(records: list[dict]) -> dict:
    errs = [r["now"]["error_pct"] for r in records if r.get("now")]
    return {"rows": len(errs), "within_3": sum(abs(e) <= 3 for e in errs),
            "within_1": sum(abs(e) <= 1 for e in errs),
            "median_abs": statistics.median(abs(e) for e in errs) if errs else None,
            "worst": max(errs, key=abs) if errs else None}


def report(paths: list[Path]) -> str:
    records = load_records(paths)
    v = next((r["versions"] for r in records if r["versions"]), {})
    sm = summary(records)
    names = [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in paths]
    sources = ", ".join(f"`{n}`" for n in names)
    dates = sorted({r["versions"].get("date") for r in records if r["versions"].get("date")})
    when = f" on {', '.join(dates)}" if dates else (" lent to a session on 2026-11-22"
                                                     if "2026-11-22" in " ".join(names) else "")
    lines = [
        "# The GPU table: predictions against a real GPU",
        "",
        "<!-- written by bench/gpu_table.py --report; do not edit by hand -->",
        "",
        f"Measured on one {v.get('gpu')} ({_gb(v.get('gpu_total_bytes'))} GB){when}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, peft {v.get('peft')}, accelerate {v.get('accelerate')}, "
        f"bitsandbytes {v.get('bitsandbytes')}. Each row is the command "
        "`python -m capacity validate <row> --device cuda --json`, run by `python bench/gpu_table.py` "
        "(one worker process for consecutive rows, a fresh one after a row that leaves memory allocated; "
        "cuBLAS's workspaces and the allocator's cache are released between rows). The raw results are "
        f"in {sources}; this page is rebuilt from them with "
        f"`python bench/gpu_table.py --report {' '.join(names)}`, so the "
        "`predicted` column is the **current** model's (target cuda) and `at run` the one the run printed.",
        "",
        "- `measured`: `torch.cuda.max_memory_allocated` over steps 2..N (reset after step 1), what "
        "the model predicts. `reserved`: the caching allocator's pool; `device used`: total − free "
        "(CUDA context included, what nvidia-smi shows).",
        "- `slack`: the allocator's block slack at the peak, allocated − requested bytes "
        "(`memory_stats`: blocks rounded to 512 bytes, a cached block reused whole when its rest "
        "would be under 1 MiB). The model predicts requested bytes plus cuBLAS's workspaces, so "
        "its error is about −slack: the slack is measured here, not modelled.",
        "- Weights are random (nothing downloaded); a step's memory does not depend on their values, "
        "except a mixture of experts' routing (the router's own choices, recorded).",
        "- `step s`: the median time of steps 2..N. † The Trainer's steps were timed with MemTracker "
        "intercepting every operation (the plain loop's were not): about 0.5 s more per step here, so "
        "not the step's own time. Since these runs the Trainer's timed steps run untracked and one "
        "extra step carries the tracker, as the plain loop does.",
        "",
    ]
    if sm["rows"]:
        lines += [f"**{sm['rows']} rows with a prediction: {sm['within_3']}/{sm['rows']} within 3%, "
                  f"{sm['within_1']}/{sm['rows']} within 1%, median |error| {sm['median_abs']:.2f}%, "
                  f"worst {sm['worst']:+.2f}%.**", ""]
    beyond = []
    for r in records:
        if r.get("now") and r.get("allocator_peak"):
            ap = r["allocator_peak"]
            residual = r["now"]["predicted"] + ap["allocated"] - ap["requested"] - r["result"]["measured_peak_bytes"]
            if abs(residual) > 2**20:
                beyond.append(f"- `{r['row']}`: {residual / 2**20:+,.1f} MiB ({r['now']['error_pct']:+.2f}%)")
    if beyond:
        lines += ["Rows where the prediction plus the measured slack is more than 1 MiB from the measurement "
                  "(every other row is within 1 MiB). The eager rows with the Trainer's full checkpointing "
                  "hold one fp32 score-sized tensor (128 MiB here) that neither the model nor a CPU trace of the "
                  "same step has (the plain loop and partial checkpointing are exact; not found); the 8-bit "
                  "base's int8 kernels keep about 40 MiB more than their CPU composition (a tensor tracker on "
                  "the GPU saw it).",
                  "", *beyond, ""]
    effs = {"bp": [], "inference": [], "mezo": []}
    for r in records:
        res, now = r["result"], r.get("now") or {}
        steps = res.get("step_seconds") or []
        clean = not (res.get("method") == "bp" and (res.get("loop") or {}).get("name") == "trainer")
        if now.get("roofline_s") and steps and clean and res.get("dtype") != "fp32":
            effs[res["method"]].append(100 * now["roofline_s"] / statistics.median(steps[1:] or steps))
    if any(effs.values()):
        def span(v):
            return f"median {statistics.median(v):.0f}% ({min(v):.0f}% to {max(v):.0f}%, {len(v)} row{'s' if len(v) != 1 else ''})" if v else "none"
        lines += ["**Time**: `roofline / step` is `capacity.step_time_seconds` on the H100 80GB preset (989 TFLOP/s "
                  "dense 16-bit, 3.35 TB/s), a lower bound, as a share of the measured step (16-bit rows; the "
                  "Trainer's steps were tracked, †, and are left out). BP in the plain loop: "
                  f"{span(effs['bp'])}; inference: {span(effs['inference'])}: small models whose steps are "
                  "tens of milliseconds, so launch-bound. MeZO: "
                  f"{span(effs['mezo'])}: this engine's MeZO step regenerates z in chunks of at most 2^20 values "
                  "(capacity/validation/mezo.py: memory-bounded, thousands of small kernels per pass), far from the "
                  "roofline's four memory-bound passes over the weights, so these are the engine's times, not a "
                  "tuned MeZO's. Divide a roofline by such a share to plan wall-clock time.", ""]
    lines += ["| row | measured GB | reserved GB | device used GB | slack | predicted GB | error | at run | "
              "step s | roofline / step | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        res, cuda, now = r["result"], r["result"].get("cuda") or {}, r.get("now")
        measured = res.get("measured_peak_bytes")
        ap = r.get("allocator_peak") or {}
        slack = (f"{100 * (ap['allocated'] - ap['requested']) / measured:.2f}%"
                 if measured and ap.get("allocated") and r["exit"] == 0 else "")
        steps = res.get("step_seconds") or []
        step = f"{statistics.median(steps[1:] or steps):.3f}" if steps else ""
        tracked = res.get("method") == "bp" and (res.get("loop") or {}).get("name") == "trainer" \
            and res.get("breakdown_source") != "MemTracker, one extra step"
        step += " †" if step and tracked else ""
        roof = now and now.get("roofline_s")
        eff = (f"{100 * roof / statistics.median(steps[1:] or steps):.0f}%"
               if roof and steps and not tracked else "")
        note = "" if r["exit"] == 0 else (res.get("error") or res.get("message") or "")[:160]
        if r["exit"] == 0 and now is None:
            note = "no prediction: " + (res.get("prediction_unavailable") or "")[:120]
        note = note.replace("|", "/").replace("\n", " ")
        lines.append(f"| `{r['row']}` | {_gb(measured)} | {_gb(cuda.get('max_memory_reserved_bytes'))} | "
                     f"{_gb(cuda.get('device_used_bytes'))} | {slack} | {_gb(now and now['predicted'])} | "
                     f"{_pct(now and now['error_pct'])} | {_pct(res.get('error_pct'))} | {step} | {eff} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=sorted(GROUPS), action="append",
                    help="row groups to run (default: all, in the order docs, widening, large)")
    ap.add_argument("--only", help="run only rows containing this text")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu", "trace"))
    ap.add_argument("--out", type=Path, default=Path("gpu-table.jsonl"))
    ap.add_argument("--budget", type=float, default=float("inf"), help="seconds after which no row starts")
    ap.add_argument("--report", type=Path, nargs="+", help="write the GPU table page from these result files "
                    "(the current model's predictions beside the recorded measurements)")
    ap.add_argument("--doc", type=Path, default=DOC, help="the page --report writes (default docs/gpu_table.md)")
    ap.add_argument("--list", action="store_true", help="print the commands and stop")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)     # internal: run rows from this index
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        args.doc.write_text(report(args.report))
        print(f"wrote {args.doc}")
        return 0
    rows = [row for g in (args.group or ["docs", "widening", "large"]) for row in GROUPS[g]()]
    if args.only:
        rows = [r for r in rows if args.only in r]
    if args.list:
        print("\n".join(rows))
        return 0
    _write_configs(Path.cwd())
    if args.worker is not None:
        return run_worker(rows, args.worker, args.device, args.out, args.deadline)
    print(json.dumps(_versions()), flush=True)
    passed = [a for g in (args.group or []) for a in ("--group", g)] + (["--only", args.only] if args.only else [])
    return run_rows(rows, passed, args.device, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
