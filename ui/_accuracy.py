"""What the figures were checked against, stated beside them: docs/accuracy.md's summary
(written by bench/accuracy.py), and what has not been measured yet."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCURACY_DOC = ROOT / "docs" / "accuracy.md"
GPU_DOC = ROOT / "docs" / "gpu_table.md"

# What no GPU run has checked yet (capacity models it for target="cuda").
CUDA_UNMEASURED = ("other GPUs (cuBLAS's workspace is priced for compute capability 9.0), several GPUs "
                   "(DDP, ZeRO and FSDP are checked against one traced rank), Adam's step on the host (offload)")


def gpu_summary() -> str | None:
    """docs/gpu_table.md's summary line ('89 rows with a prediction: 89/89 within 3%, ...'),
    or None when there is no GPU table in this build."""
    if not GPU_DOC.is_file():
        return None
    for line in GPU_DOC.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"^\*\*(\d+) rows with a prediction: (.*)\.\*\*$", line)
        if m:
            return f"{m.group(1)} runs: {m.group(2)}"
    return None


def summary_row(label: str = "all") -> dict | None:
    """The summary table's row for `label`: {'cases', 'median', 'worst', 'within'} as
    written (e.g. '448', '0.01%', '2.91%', '448/448': 'within' is the tightest "within N%"
    column), or None when there is no report. Columns are read by their header."""
    if not ACCURACY_DOC.is_file():
        return None
    header = None
    for line in ACCURACY_DOC.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if cells[0] != label or "median abs error" not in header:
            continue
        col = dict(zip(header, cells))
        within = [h for h in header if h.startswith("within")]
        return {"method": cells[0], "cases": col.get("cases"), "median": col.get("median abs error"),
                "worst": col.get("worst abs error"), "within": col.get(within[0]) if within else None}
    return None


def statement(target: str) -> str:
    """Markdown (our own text): what the figures were measured against, and what not."""
    row = summary_row()
    checked = ("**Checked against:** traces of the real `transformers` code under fake tensors, with CPU "
               "kernel semantics (small models, batch 1-2, contexts up to 4,096 tokens)")
    checked += (f": {row['cases']} cases, median error {row['median']}, worst {row['worst']}."
                if row else ": no accuracy report (docs/accuracy.md) in this build.")
    gpu = gpu_summary()
    if target == "cuda" and gpu:
        measured = (f"**Measured on a GPU:** an H100 80GB against `torch.cuda.max_memory_allocated` "
                    f"(docs/gpu_table.md: full fine-tuning, LoRA, prefix, QLoRA and MeZO, 0.1B to 30B), {gpu}. "
                    f"**Not measured on a GPU:** {CUDA_UNMEASURED}; the Validate page measures your own GPU.")
    elif target == "cuda":
        measured = "**Not measured yet:** no GPU table in this build; the Validate page measures your own GPU."
    else:
        measured = ("These are the CPU kernels' figures, the ones the traces check; *Kernels modelled: cuda* "
                    "is what the GPU table measured.")
    return f"{checked} {measured}"


def summary() -> str | None:
    """The opening paragraph and the summary section of docs/accuracy.md (the whole file
    when it has no summary heading), or None when the file is not there."""
    if not ACCURACY_DOC.is_file():
        return None
    lines = ACCURACY_DOC.read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^#{1,6}\s.*summary", line, re.IGNORECASE)), None)
    if start is None:
        return "\n".join(lines)
    first_heading = next((i for i, line in enumerate(lines) if line.startswith("#")), start)
    intro = [line for line in lines[first_heading + 1:start] if not line.startswith("#")]
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((j for j in range(start + 1, len(lines)) if re.match(rf"^#{{1,{level}}}\s", lines[j])), len(lines))
    return "\n".join(intro + lines[start + 1:end]).strip()



METHOD_CHECKED = ("**Fine-tuning methods** (LoRA, prefix, top layers; BP and MeZO): checked against traces of the "
                  "real `peft` code under fake tensors, each trace path equal byte for byte to a real CPU run.")


def base_statement(bits: tuple) -> str:
    """What the quantized-base figures (8- and/or 4-bit) were checked against, and what not."""
    unmeasured = []
    if 4 in bits:
        unmeasured.append("the fused 4-bit kernel some GPUs use for up to 512 rows (priced as the dequantizing "
                          "path, an upper bound)")
    if 8 in bits:
        unmeasured.append("LLM.int8's outlier columns of real weights (random weights have none; on the H100 the "
                          "int8 kernels kept about 40 MiB more than priced, -1.05% at 2,048 tokens)")
    which = " and ".join(f"{b}-bit" for b in bits)
    return (f"**{which} base{'s' if len(bits) > 1 else ''}**: bitsandbytes' quantized kernels are CUDA kernels and "
            "its parameters cannot be traced, so these were checked against real CPU runs of small models, taking "
            "the GPU's code path where bitsandbytes runs on the CPU (storage exact; dequantize-then-matmul, what "
            "CUDA runs for more than 1,536 tokens), and measured on an H100 (docs/gpu_table.md: within 1.1%). "
            "**Not measured on a GPU:** " + "; ".join(unmeasured)
            + ". `prepare_model_for_kbit_training`'s fp32 copies and paged or 8-bit optimizers are not modelled "
              "(docs/peft.md).")


def peft_statement(pf) -> str | None:
    """Markdown (our own text): what the PEFT figures were checked against (docs/peft.md),
    or None for full fine-tuning on a 16-bit base (statement() says it all)."""
    if pf.method == "none" and pf.weights_bits == 16:
        return None
    parts = [METHOD_CHECKED] if pf.method != "none" else []
    if pf.weights_bits != 16:
        parts.append(base_statement((pf.weights_bits,)))
    return " ".join(parts)


def variants_statement() -> str:
    """For the table of every way of fine-tuning (16-, 8- and 4-bit bases)."""
    return f"{METHOD_CHECKED} {base_statement((8, 4))}"
