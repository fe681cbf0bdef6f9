"""What a CUDA GPU allocates that a CPU trace cannot show: measured on the GPU itself.

    python bench/cuda_mechanisms.py > cuda-mechanisms.json

1. cuBLAS workspaces: torch gives each (cuBLAS handle, stream) pair a workspace from the
   caching allocator (aten/src/ATen/cuda/CublasHandlePool.cpp, getNewWorkspace), and each
   thread has its own handle. A training step runs matmuls on the main thread (forward) and
   on autograd's device thread (backward): measured here as torch.cuda.memory_allocated
   after a first matmul on each, beyond the result.
2. SDPA's kernel on CUDA (torch._fused_sdp_choice: flash, memory-efficient, cuDNN or math)
   for each dtype, head size, grouped-query heads (enable_gqa, as transformers passes it
   when there is no mask) and mask, with the bytes the forward keeps for backward.
3. The caching allocator's rounding: requested against allocated bytes at the peak of a
   small training step (memory_stats' requested_bytes and allocated_bytes).

Prints one JSON object.
"""

from __future__ import annotations

import json
import threading

import torch
import torch.nn.functional as F


def _allocated() -> int:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def workspaces() -> dict:
    """Bytes allocated by the first matmul on each thread, beyond its result."""
    torch._C._cuda_clearCublasWorkspaces()
    out = {}
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    before = _allocated()
    c = a @ a
    out["main_thread_bf16_mm"] = _allocated() - before - c.numel() * c.element_size()
    before = _allocated()
    c2 = a.float() @ a.float()
    out["main_thread_fp32_mm_after_bf16"] = _allocated() - before - c2.numel() * 4 - a.numel() * 4 * 0
    del c2
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    before = _allocated()
    c3 = F.linear(a, a, bias)   # addmm with a bias: cuBLASLt's epilogue path
    out["main_thread_linear_bias_after"] = _allocated() - before - c3.numel() * c3.element_size()
    del c3
    box = {}

    def other():
        before = _allocated()
        c4 = a @ a
        box["other_thread_bf16_mm"] = _allocated() - before - c4.numel() * c4.element_size()
    t = threading.Thread(target=other)
    t.start()
    t.join()
    out.update(box)
    torch._C._cuda_clearCublasWorkspaces()
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = (x @ w).sum()
    before = _allocated()
    y.backward()
    out["after_backward_from_clear"] = _allocated() - before - (x.numel() + w.numel()) * 2
    out["total_after_forward_and_backward"] = _allocated() - (x.numel() + w.numel()) * 4
    return out


BACKENDS = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_cases() -> list:
    rows = []
    b, h, s = 4, 32, 512
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for d in (64, 128, 256):
            for kv in (32, 4):
                for mask in ("causal", "bool", "float"):
                    for dropout in (0.0, 0.1):
                        gqa = kv != h and mask == "causal"
                        q = torch.randn(b, h, s, d, device="cuda", dtype=dtype, requires_grad=True)
                        kvh = kv if gqa else h
                        k = torch.randn(b, kvh, s, d, device="cuda", dtype=dtype, requires_grad=True)
                        v = torch.randn(b, kvh, s, d, device="cuda", dtype=dtype, requires_grad=True)
                        m = None
                        if mask == "bool":
                            m = torch.ones(s, s, device="cuda", dtype=torch.bool).tril()[None, None]
                        elif mask == "float":
                            m = torch.zeros(b, 1, s, s, device="cuda", dtype=dtype)
                        kw = dict(attn_mask=m, dropout_p=dropout, is_causal=mask == "causal", enable_gqa=gqa)
                        try:
                            choice = BACKENDS.get(int(torch._fused_sdp_choice(q, k, v, **kw)), "?")
                        except Exception as err:   # noqa: BLE001
                            choice = f"raised {type(err).__name__}"
                        inputs = _allocated()
                        torch.cuda.reset_peak_memory_stats()
                        try:
                            o = F.scaled_dot_product_attention(q, k, v, **kw)
                            kept = _allocated() - inputs - o.numel() * o.element_size()
                            peak = torch.cuda.max_memory_allocated() - inputs
                            del o
                        except Exception as err:   # noqa: BLE001
                            kept, peak = f"raised {type(err).__name__}: {str(err)[:100]}", None
                        rows.append({"dtype": str(dtype).replace("torch.", ""), "head_dim": d, "kv_heads": kvh,
                                     "mask": mask, "dropout": dropout, "enable_gqa": gqa, "backend": choice,
                                     "kept_beyond_output_bytes": kept, "forward_peak_beyond_inputs_bytes": peak,
                                     "scores_fp32_bytes": 4 * b * h * s * s, "hidden_bytes_dtype":
                                     b * s * h * d * q.element_size()})
                        del q, k, v, m
    return rows


def allocator_rounding() -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=32000)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    ids = torch.randint(0, 32000, (4, 512), device="cuda")
    stats = []
    for step in range(3):
        if step == 1:
            torch.cuda.reset_peak_memory_stats()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    st = torch.cuda.memory_stats()
    stats = {k: st[k] for k in ("allocated_bytes.all.peak", "requested_bytes.all.peak", "allocated_bytes.all.current",
                                "requested_bytes.all.current", "active.all.peak")}
    return stats


def snapshot(row: str, top: int = 25) -> dict:
    """Run one validate row with the allocator's history recorded; replay its events to the
    moment of the highest allocated total in steps 2..N and list the largest live blocks then,
    with the Python frames that made them (what a tensor tracker cannot see shows here)."""
    import contextlib
    import io
    from capacity.cli import main as capacity_main
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        capacity_main(["validate", *row.split(), "--device", "cuda", "--json", "--progress", "none"])
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = snap["device_traces"][0]
    live, total, best, best_live = {}, 0, -1, {}
    for ev in events:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            total += ev["size"]
        elif ev["action"] in ("free_requested", "free_completed") and ev["addr"] in live:
            if ev["action"] == "free_requested":
                total -= live.pop(ev["addr"])["size"]
        if total > best:
            best, best_live = total, dict(live)
    blocks = sorted(best_live.values(), key=lambda e: -e["size"])

    def where(e):
        frames = [f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}" for f in e.get("frames", [])][:6]
        return frames
    sizes = {}
    for e in best_live.values():
        sizes[e["size"]] = sizes.get(e["size"], 0) + 1
    return {"row": row, "peak_from_trace": best, "result": json.loads(buf.getvalue().splitlines()[-1]),
            "largest": [{"size": e["size"], "frames": where(e)} for e in blocks[:top]],
            "no_python_frame": [{"size": e["size"]} for e in blocks if not e.get("frames")][:20],
            "events": len(events)}


def main() -> None:
    import sys
    if len(sys.argv) > 2 and sys.argv[1] == "--snapshot":
        print(json.dumps(snapshot(sys.argv[2])))
        return
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
           "capability": list(torch.cuda.get_device_capability())}
    out["workspaces"] = workspaces()
    out["sdpa"] = sdpa_cases()
    out["allocator"] = allocator_rounding()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
