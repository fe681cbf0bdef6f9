"""What fits' "devices needed" view: for each model and method, the fewest devices of the
sidebar's kind (among capacity.DEVICE_COUNTS) whose memory holds one step, with the peak per
device there (capacity.devices_needed_table), as a table and as CSV data."""

from __future__ import annotations

import pandas as pd

import capacity as cap
from ui import _capacity, _format as fmt, _scenario as sc


def models(choice: str, family: str) -> dict:
    """The table's rows: every preset of `family` ("family"), or the largest preset (by
    parameters) of each family ("largest")."""
    if choice == "family":
        return {name: sc.model_shape(name) for name in _capacity.families()[family]}
    biggest = [max(names, key=sc.preset_params) for names in _capacity.families().values()]
    return {name: sc.model_shape(name) for name in biggest}


def methods(s: dict) -> dict:
    """The methods of the devices-needed table, on the sidebar's sharding (capacity's
    on_devices: FSDP full shard from two devices when the sidebar has none): BP with the
    sidebar's optimizer, checkpointed BP, MeZO, and BP with the optimizer offloaded to the
    host (FSDP2's CPUOffloadPolicy) unless the sidebar already offloads."""
    keep = float(s["keep"])
    out = {"MeZO": sc.method_scenario("mezo"), f"BP ({s['opt']})": sc.method_scenario("bp"),
           f"BP checkpointed (L'/L={keep:g})": sc.method_scenario("bp", keep=keep)}
    if not s["offload"]:
        sharding = s["sharding"] if s["sharding"] in sc.OFFLOAD_SHARDINGS else "fsdp"
        # the device count is the table's to choose (capacity's on_devices); 2 makes the setting valid
        offloaded = cap.Parallel(devices=2, sharding=sharding, offload_optimizer=True)
        named = "" if sharding == s["sharding"] else f", {sc.SHARDING_NAMES[sharding]}"
        out[f"BP ({s['opt']}), optimizer offloaded{named}"] = sc.method_scenario("bp", parallel=offloaded)
    return out


def rows(models: dict, methods: dict, budget: int) -> list[dict]:
    """capacity.devices_needed_table, one model at a time (each row kept: ui/_capacity.py),
    so that a model capacity refuses (a context beyond its positions) is a note on its row,
    not a missing table."""
    out = []
    for name, shape in models.items():
        try:
            out.append(_capacity.devices_needed_row(name, shape, methods, budget))
        except ValueError as err:
            out.append({"model": name, "params": cap.parameter_count(shape), "methods": {}, "note": str(err)})
    return out


def cell(answer: dict | None, note: str = "") -> str:
    """'8 devices · 61.23 GB each' (with '· host 12.00 GB' when offloading), 'more than 64', or
    why capacity has no answer."""
    if note:
        return f"n/a: {note}"
    if answer is None:
        return f"more than {max(cap.DEVICE_COUNTS)}"
    host = f" · host {fmt.size_text(answer['host_bytes'])}" if answer["host_bytes"] else ""
    n = answer["devices"]
    return f"{n} device{'s' if n > 1 else ''} · {fmt.size_text(answer['peak_bytes'])}{' each' if n > 1 else ''}{host}"


def display(rows: list[dict], labels: list[str]) -> pd.DataFrame:
    """The table as shown: a row per model, a column per method."""
    shown = {}
    for row in rows:
        cells = {"parameters": fmt.params_text(row["params"])}
        for label in labels:
            cells[label] = cell(row["methods"].get(label), row.get("note", ""))
        shown[row["model"]] = cells
    return pd.DataFrame.from_dict(shown, orient="index").rename_axis("model")


def data(rows: list[dict], labels: list[str]) -> pd.DataFrame:
    """The table as data: one line per model and method, bytes and both units."""
    records = []
    for row in rows:
        for label in labels:
            a = row["methods"].get(label)
            records.append({"model": row["model"], "parameters": row["params"], "method": label,
                            "devices": a["devices"] if a else None, "sharding": a["sharding"] if a else None,
                            "peak_bytes_per_device": a["peak_bytes"] if a else None,
                            **fmt.gb_columns("peak per device", a["peak_bytes"] if a else float("nan")),
                            "host_bytes_per_device": a["host_bytes"] if a else None,
                            "note": row.get("note", "") or ("" if a else f"more than {max(cap.DEVICE_COUNTS)} devices")})
    return pd.DataFrame(records)


def caption(s: dict, budget: int) -> str:
    """What the table answers, in one line: the device, the counts tried, the sharding."""
    dev = sc.device()
    kind = dev.name if dev else f"devices of {fmt.gb_text(sc.memory_bytes())}"
    sharding = (sc.SHARDING_NAMES[s["sharding"]] + " (the sidebar's)" if s["sharding"] != "none"
                else "none on one device, FSDP full shard from 2 devices (the sidebar has none)")
    offload = "; optimizer offloaded to the host" if s["offload"] else ""
    counts = ", ".join(map(str, cap.DEVICE_COUNTS))
    return (f"The fewest {fmt.md(kind)} (among {counts}) whose {fmt.gb_text(budget)} each holds one step, and the "
            f"peak per device there. Sharding: {fmt.md(sharding)}{offload}. Batch {int(s['batch'])} per device, "
            f"context {int(s['seq']):,}.")
