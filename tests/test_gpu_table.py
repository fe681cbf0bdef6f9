"""The memory model against what a real GPU measured (an H100 lent on 2026-11-22).

The measurements are stored (bench/results/); the predictions are the current model's, so
these tests fail when a change to capacity/ moves a CUDA prediction away from the GPU.
Nothing here needs a GPU or torch."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import capacity as cap
from capacity import cuda_runtime
from capacity.activations import sdpa_math_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_table  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu-h100-2026-11-22.jsonl"
MECHANISMS = ROOT / "bench" / "results" / "cuda-mechanisms-h100-2026-11-22.json"


@pytest.fixture(scope="module")
def records():
    return gpu_table.load_records([RESULTS])


def test_every_measured_row_is_within_3_percent_of_the_current_prediction(records):
    """The issue's target, on a GPU: |predicted − max_memory_allocated| ≤ 3% of it."""
    measured = [r for r in records if r["exit"] == 0]
    predicted = [r for r in measured if r["now"] is not None]
    assert len(measured) >= 85 and len(predicted) >= len(measured) - 1   # olmoe LoRA: not modelled
    misses = {r["row"]: round(r["now"]["error_pct"], 2) for r in predicted if abs(r["now"]["error_pct"]) > 3}
    assert not misses, misses
    s = gpu_table.summary(records)
    assert s["median_abs"] < 0.5, s


def test_what_the_model_does_not_predict_is_the_allocators_block_slack(records):
    """Beyond requested bytes and cuBLAS's workspaces, max_memory_allocated holds the caching
    allocator's rounding (allocated − requested at the peak, recorded per row): with it
    added, the prediction is exact in all but the rows named in docs/gpu_table.md."""
    exact = 0
    for r in records:
        if r["exit"] != 0 or r["now"] is None:
            continue
        slack = r["allocator_peak"]["allocated"] - r["allocator_peak"]["requested"]
        residual = r["now"]["predicted"] + slack - r["result"]["measured_peak_bytes"]
        exact += abs(residual) <= 2**20   # within 1 MiB
    assert exact >= 80


def test_the_gpu_table_page_is_the_report_of_the_stored_results():
    """docs/gpu_table.md is rebuilt from the stored results with the current model
    (`python bench/gpu_table.py --report bench/results/gpu-h100-2026-11-22.jsonl`)."""
    assert gpu_table.DOC.read_text() == gpu_table.report([RESULTS])


def test_cublas_workspaces_are_what_the_gpu_allocated():
    w = json.loads(MECHANISMS.read_text())["workspaces"]
    assert tuple(json.loads(MECHANISMS.read_text())["capability"]) == cuda_runtime.HOPPER
    assert w["main_thread_bf16_mm"] == w["other_thread_bf16_mm"] == cuda_runtime.cublas_workspace_bytes()
    assert w["main_thread_linear_bias_after"] == cuda_runtime.CUBLASLT_WORKSPACE_BYTES
    assert w["after_backward_from_clear"] == cuda_runtime.cublas_workspace_bytes()   # autograd's thread


def test_workspaces_by_method_bias_and_recomputation():
    llama, gpt2 = cap.load_preset("llama-2-7b"), cap.load_preset("gpt2")
    ws, lt = cuda_runtime.cublas_workspace_bytes(), cuda_runtime.CUBLASLT_WORKSPACE_BYTES
    bp = cap.Scenario(method="bp", target="cuda")
    assert cuda_runtime.workspace_bytes(llama, bp) == 2 * ws
    assert cuda_runtime.workspace_bytes(llama, replace(bp, method="mezo")) == ws
    assert cuda_runtime.workspace_bytes(gpt2, bp) == 2 * ws + lt
    assert cuda_runtime.workspace_bytes(gpt2, replace(bp, keep=0.0)) == 2 * ws + 2 * lt
    assert cuda_runtime.workspace_bytes(gpt2, replace(bp, target="cpu")) == 0
    # earlier GPUs: torch's default ":4096:2:16:8"
    assert cuda_runtime.cublas_workspace_bytes((8, 0)) == 8 * 2**20 + 128 * 1024


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kv_heads", [32, 4])
def test_sdpa_math_path_on_cuda_is_the_kernel_torch_chose(dtype, kv_heads):
    """fp32 with grouped-query heads (transformers passes enable_gqa) runs the math path;
    every other causal case a fused kernel (torch._fused_sdp_choice on the H100)."""
    chosen = {(c["dtype"], c["kv_heads"]): c["backend"] for c in json.loads(MECHANISMS.read_text())["sdpa"]
              if c["head_dim"] == 64 and c["mask"] == "causal" and c["dropout"] == 0.0}
    shape = cap.from_hf_config({**gpu_table.LLAMA_1B, "num_key_value_heads": kv_heads})
    ours = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    sc = cap.Scenario(method="bp", dtype=ours, attention="sdpa", target="cuda")
    assert sdpa_math_path(shape, sc) == (chosen[(dtype, kv_heads)] == "math")
