"""What PyTorch's CUDA runtime takes from the caching allocator beside tensors: the cuBLAS
and cuBLASLt workspaces.

torch.cuda.max_memory_allocated counts them; a tensor tracker (MemTracker), and so a CPU
trace, does not. torch gives every (cuBLAS handle, stream) pair its own workspace
(aten/src/ATen/cuda/CublasHandlePool.cpp: getCurrentCUDABlasHandle, getNewWorkspace), and
every thread its own handle. A training step runs matmuls on two threads, the main one
(forward) and autograd's device thread (backward, and a checkpointed layer's recomputed
forward); MeZO and inference on the main thread alone. Workspaces stay allocated once made,
so every phase of the steps after the first holds them.

Measured on an H100 (torch 2.11, `python bench/cuda_mechanisms.py`): 33,554,432 bytes for the
first matmul on each thread, and 1,048,576 more for the first linear with a bias (addmm's
cuBLASLt epilogue) on a thread. The GPU table (docs/gpu_table.md) checks the sum against
max_memory_allocated over whole training steps.
"""

from __future__ import annotations

from .scenario import Scenario
from .shape import ModelShape

MiB = 2**20

# CublasHandlePool.cpp, parseChosenWorkspaceSize, with CUBLAS_WORKSPACE_CONFIG unset:
# ":4096:8" (32 MiB) on compute capability 9.0 (Hopper), ":4096:2:16:8" (8 MiB + 128 KiB) on
# earlier GPUs. The estimate is made for Hopper, where it was measured.
HOPPER = (9, 0)


def cublas_workspace_bytes(capability: tuple[int, int] = HOPPER) -> int:
    """One (handle, stream) pair's cuBLAS workspace under torch's default."""
    return 32 * MiB if capability >= HOPPER else 8 * MiB + 128 * 1024


# CUBLASLT_WORKSPACE_SIZE's default, 1024 KiB: taken by the first linear with a bias on a
# thread (measured on the H100 beside the cuBLAS workspace, not inside it).
CUBLASLT_WORKSPACE_BYTES = 1 * MiB


def _has_biased_linear(s: ModelShape) -> bool:
    from .params import layer_linears
    return any(lin.bias for kind in set(s.layers) for lin in layer_linears(s, kind))


def matmul_threads(sc: Scenario) -> int:
    """Threads that run cuBLAS matmuls in a step: the main thread, and for BP autograd's."""
    return 2 if sc.method == "bp" else 1


def workspace_bytes(s: ModelShape, sc: Scenario, capability: tuple[int, int] = HOPPER) -> int:
    """The cuBLAS workspaces a step on one CUDA device holds (0 for a CPU target); a model
    with biased linears adds a cuBLASLt workspace on the main thread, and on autograd's
    thread when it recomputes checkpointed layers (a linear's backward runs no addmm)."""
    if sc.target != "cuda":
        return 0
    total = matmul_threads(sc) * cublas_workspace_bytes(capability)
    if _has_biased_linear(s):
        recomputes = sc.method == "bp" and sc.keep < 1
        total += (2 if recomputes else 1) * CUBLASLT_WORKSPACE_BYTES
    return total


def with_workspaces(phases: dict[str, dict[str, int]], s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """The phases of a step (one device, or one rank) with the workspaces in every phase's
    temporaries: they are made in the first step and held from then on."""
    ws = workspace_bytes(s, sc)
    return {name: {**terms, "temporaries": terms.get("temporaries", 0) + ws} for name, terms in phases.items()}
