"""Inverse questions: what fits a memory budget.

Every search relies on the peak growing with the searched quantity (model width, context,
batch), which tests/test_properties.py checks.
"""

from __future__ import annotations

from dataclasses import replace

from .context import longest_runnable_context
from .memory import estimate
from .params import parameter_count
from .presets import families, load_preset
from .scenario import MAX_BATCH, MAX_DEVICES, MAX_SEQ, Estimate, Parallel, Scenario
from .shape import MAX_DIM, ModelShape


def _check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"budget: must be a positive number of bytes, got {budget!r}")


def fits(shape: ModelShape, sc: Scenario, budget: int) -> bool:
    return estimate(shape, sc).peak_bytes <= budget


def largest_preset(family: str, budget: int, sc: Scenario,
                   estimate_of=estimate) -> tuple[str | None, Estimate | None]:
    """The largest preset of `family` whose peak fits `budget` (None if none does).
    estimate_of(shape, sc): the estimate to use (the app passes the one it keeps answers of)."""
    _check_budget(budget)
    fams = families()
    if family not in fams:
        raise ValueError(f"family: unknown {family!r}; known: {', '.join(fams)}")
    best = (None, None)
    for name in fams[family]:
        est = estimate_of(load_preset(name), sc)
        if est.peak_bytes <= budget:
            best = (name, est)
    return best


def largest_preset_of_all(budget: int, sc: Scenario,
                          estimate_of=estimate) -> tuple[str | None, Estimate | None]:
    """The largest preset (by parameters) of any family that fits `budget`. A family that
    cannot run `sc` (e.g. LoRA on a mixture of experts) is passed over; if every family
    refuses, the first family's reason is raised."""
    best, errors, ran = (None, None), [], False
    for family in families():
        try:
            name, est = largest_preset(family, budget, sc, estimate_of)
        except ValueError as err:
            errors.append(err)
            continue
        ran = True
        if name is not None and (best[1] is None or est.params > best[1].params):
            best = (name, est)
    if not ran:
        raise errors[0]
    return best


def _largest_int(ok, low: int, high: int) -> int:
    """Largest x in [low, high] with ok(x), assuming ok is monotone; low - 1 if none."""
    if not ok(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        if ok(mid):
            low = mid
        else:
            high = mid - 1
    return low


def scaled_shape(base: ModelShape, width_units: int) -> ModelShape:
    """The continuous family of `base` at fixed depth-to-width ratio L/h: hidden size
    width_units · head_dim, depth scaled in proportion (at least 1 layer). ValueError when a
    size of it is out of range (see largest_valid_width)."""
    hidden = width_units * base.head_dim
    layers = max(1, round(base.num_layers * hidden / base.hidden_size))
    return base.scaled(num_layers=layers, hidden_size=hidden)


def _valid_width(base: ModelShape, width_units: int) -> bool:
    try:
        scaled_shape(base, width_units)
    except ValueError:
        return False
    return True


def largest_valid_width(base: ModelShape) -> int:
    """The widest member of base's continuous family whose every size is in range (its
    sizes grow with the width, so the valid widths are 1 up to this); 0 if none is."""
    top = max(1, min(MAX_DIM // base.head_dim, 4096))   # up to h = 4096 head dims (far past 1T params)
    return max(0, _largest_int(lambda u: _valid_width(base, u), 1, top))


def largest_scaled_model(base: ModelShape, budget: int, sc: Scenario) -> tuple[ModelShape | None, int]:
    """The largest member of `base`'s continuous family (fixed L/h) that fits `budget`:
    (shape, parameter count), or (None, 0). Only valid shapes are built."""
    _check_budget(budget)
    top = largest_valid_width(base)
    if top < 1:
        return None, 0
    units = _largest_int(lambda u: fits(scaled_shape(base, u), sc, budget), 1, top)
    if units < 1:
        return None, 0
    shape = scaled_shape(base, units)
    return shape, parameter_count(shape)


def longest_context(shape: ModelShape, sc: Scenario, budget: int) -> int:
    """Longest sequence (tokens per example) whose step fits `budget`; 0 if none. It stops
    at a learned position table's length (the model cannot run further); for a RoPE model
    it may go beyond max_position_embeddings: capacity.context_note(shape, seq) says so."""
    _check_budget(budget)
    top = min(MAX_SEQ, longest_runnable_context(shape) or MAX_SEQ)
    best = _largest_int(lambda s: fits(shape, replace(sc, seq=s), budget), 1, top)
    return max(best, 0)


def largest_batch(shape: ModelShape, sc: Scenario, budget: int) -> int:
    """Largest batch whose step fits `budget`; 0 if none."""
    _check_budget(budget)
    best = _largest_int(lambda b: fits(shape, replace(sc, batch=b), budget), 1, MAX_BATCH)
    return max(best, 0)


def relative_model_size(base: ModelShape, budget: int, bp: Scenario, mezo: Scenario) -> float:
    """P_MeZO / P_BP: parameters of the largest model of base's continuous family that
    MeZO fits in `budget`, over the same for BP (the paper's headline ratio).
    0.0 if MeZO fits nothing; inf if MeZO fits something and BP nothing."""
    _, p_mezo = largest_scaled_model(base, budget, mezo)
    _, p_bp = largest_scaled_model(base, budget, bp)
    if p_mezo == 0:
        return 0.0
    return p_mezo / p_bp if p_bp else float("inf")


# ---------------------------------------------------------------- across devices

# Device counts the "devices needed" answers try: data-parallel groups of powers of two,
# one device up to eight nodes of eight.
DEVICE_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def on_devices(sc: Scenario, devices: int) -> Scenario:
    """`sc` on `devices` devices with its sharding (one device: the plain single-device
    step, whatever the sharding; the offload setting applies to FSDP on one device too)."""
    pl = sc.parallel
    if devices == 1 and not pl.offload_optimizer:
        return replace(sc, parallel=Parallel())
    sharding = pl.sharding if pl.sharding != "none" else "fsdp"
    return replace(sc, parallel=Parallel(devices=devices, sharding=sharding,
                                         offload_optimizer=pl.offload_optimizer))


def _check_counts(counts) -> tuple[int, ...]:
    counts = tuple(counts)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DEVICES
                         for n in counts):
        raise ValueError(f"devices: whole numbers in [1, {MAX_DEVICES}], got {counts!r}")
    return tuple(sorted(set(counts)))


def fewest_devices(shape: ModelShape, sc: Scenario, budget: int,
                   counts=DEVICE_COUNTS) -> tuple[int | None, Estimate | None]:
    """The fewest devices among `counts` on which one step of `sc` fits `budget` bytes per
    device (each count with sc's sharding, see on_devices): (devices, that estimate), or
    (None, None). Every count is tried (a sharded peak need not fall with every added
    device: padding, and DDP not at all)."""
    _check_budget(budget)
    for n in _check_counts(counts):
        est = estimate(shape, on_devices(sc, n))
        if est.peak_bytes <= budget:
            return n, est
    return None, None


def largest_preset_on_devices(family: str, budget: int, sc: Scenario,
                              devices: int) -> tuple[str | None, Estimate | None]:
    """The largest preset of `family` whose per-device peak on `devices` devices (sc's
    sharding) fits `budget`."""
    return largest_preset(family, budget, on_devices(sc, _check_counts([devices])[0]))


def devices_needed_table(models: dict[str, ModelShape], methods: dict[str, Scenario], budget: int,
                         counts=DEVICE_COUNTS) -> list[dict]:
    """For each model, for each method: the fewest devices (among `counts`) whose per-device
    budget holds one step, its per-device peak and host memory. Rows in the order of
    `models`: {"model", "params", "methods": {label: {"devices", "peak_bytes",
    "host_bytes", "sharding"} or None when no count fits}}. `budget` is what each device
    has for live tensors (its memory less the CUDA context and allocator reserve the
    caller allows for)."""
    _check_budget(budget)
    counts = _check_counts(counts)
    rows = []
    for name, shape in models.items():
        row = {"model": name, "params": parameter_count(shape), "methods": {}}
        for label, sc in methods.items():
            n, est = fewest_devices(shape, sc, budget, counts)
            row["methods"][label] = None if n is None else {
                "devices": n, "peak_bytes": est.peak_bytes, "host_bytes": est.host_bytes,
                "sharding": on_devices(sc, n).parallel.sharding}
        rows.append(row)
    return rows
# ---------------------------------------------------------------- method variants side by side

# The ways to fine-tune that the What fits table compares (issue 10): each a method and what
# it trains. QLoRA is LoRA on a 4-bit NF4 base with double quantization, as the QLoRA paper
# (Dettmers et al. 2023) runs it. The LoRA settings (rank, targets, dropout) come from the
# caller's Peft; the method and the base weights from the variant.
VARIANTS = {
    "BP full": ("bp", dict(method="none", weights_bits=16)),
    "BP LoRA": ("bp", dict(method="lora", weights_bits=16)),
    "QLoRA": ("bp", dict(method="lora", weights_bits=4, quant="nf4", double_quant=True)),
    "MeZO full": ("mezo", dict(method="none", weights_bits=16)),
    "MeZO LoRA": ("mezo", dict(method="lora", weights_bits=16)),
    "MeZO LoRA 8-bit": ("mezo", dict(method="lora", weights_bits=8)),
    "MeZO LoRA 4-bit": ("mezo", dict(method="lora", weights_bits=4, quant="nf4", double_quant=True)),
}
# P_MeZO / P_BP for each pairing of a MeZO variant with a BP variant.
PAIRINGS = [(m, b) for m, (mm, _) in VARIANTS.items() if mm == "mezo" for b, (bm, _) in VARIANTS.items() if bm == "bp"]


def variant_scenario(name: str, sc: Scenario) -> Scenario:
    """`sc` run as the named variant (VARIANTS): its method and what it trains, the LoRA
    settings and everything else from `sc`."""
    if name not in VARIANTS:
        raise ValueError(f"variant: unknown {name!r}; known: {', '.join(VARIANTS)}")
    method, peft = VARIANTS[name]
    return replace(sc, method=method, peft=replace(sc.peft, **peft))


def fits_table(budget: int, sc: Scenario, shape: ModelShape | None = None, family: str | None = None,
               variants: list[str] | None = None) -> dict:
    """What fits `budget` by each way of fine-tuning (VARIANTS), for the What fits page and
    the Calculator's side-by-side variants: one row per variant with the largest preset of
    `family` (name, parameters, peak) and the largest member of `shape`'s continuous family
    (parameters), and P_MeZO / P_BP for each pairing (PAIRINGS) of the scaled models.
    With neither `family` nor `shape`: the largest preset of any family.

    A variant the model cannot run (e.g. LoRA with no default targets for its type) gets
    "error" instead of numbers. Returns {"budget_bytes", "rows": [...], "ratios": [...]}."""
    _check_budget(budget)
    names = list(VARIANTS) if variants is None else variants
    rows, scaled = [], {}
    for name in names:
        row: dict = {"variant": name}
        try:
            vsc = variant_scenario(name, sc)
            row.update(method=vsc.method, peft=vsc.to_dict()["peft"])
            if family is not None or shape is None:
                preset, est = (largest_preset(family, budget, vsc) if family is not None
                               else largest_preset_of_all(budget, vsc))
                row.update(largest_preset=preset, largest_preset_params=est.params if est else 0,
                           largest_preset_peak_bytes=est.peak_bytes if est else None)
            if shape is not None:
                big, params = largest_scaled_model(shape, budget, vsc)
                row.update(largest_scaled_params=params, largest_scaled_name=big.name if big else None)
                scaled[name] = params
        except ValueError as err:
            row["error"] = str(err)
        rows.append(row)
    ratios = []
    for mezo, bp in PAIRINGS:
        if mezo in scaled and bp in scaled:
            p_mezo, p_bp = scaled[mezo], scaled[bp]
            ratio = 0.0 if p_mezo == 0 else (p_mezo / p_bp if p_bp else float("inf"))
            ratios.append({"mezo": mezo, "bp": bp, "ratio": ratio})
    return {"budget_bytes": budget, "rows": rows, "ratios": ratios}
