"""The command line users script against: names, JSON contract, exit codes."""

import json
import subprocess
import sys

import pytest

from capacity import Scenario, estimate, load_preset, parameter_count


def run(*args):
    return subprocess.run([sys.executable, "-m", "capacity", *args], capture_output=True, text=True, timeout=120)


def test_estimate_json_matches_library():
    r = run("estimate", "--preset", "gpt2-medium", "--method", "bp", "--optimizer", "adamw",
            "--batch", "8", "--seq", "512", "--dtype", "bf16", "--keep", "0.5", "--attention", "sdpa", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    sc = Scenario(method="bp", optimizer="adamw", batch=8, seq=512, dtype="bf16", keep=0.5, attention="sdpa")
    est = estimate(load_preset("gpt2-medium"), sc)
    assert out["params"] == parameter_count(load_preset("gpt2-medium"))
    assert out["peak_bytes"] == est.peak_bytes
    assert sum(out["breakdown"].values()) == out["peak_bytes"]


def test_estimate_table_labels_units():
    r = run("estimate", "--preset", "llama-2-7b", "--method", "mezo")
    assert r.returncode == 0 and " GB " in r.stdout and " GiB" in r.stdout


def test_estimate_from_config_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                               "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100}))
    r = run("estimate", "--config", str(cfg), "--method", "inference", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["params"] > 0


@pytest.mark.parametrize("args,needle", [
    (["estimate", "--preset", "nope", "--method", "bp"], "unknown model"),
    (["estimate", "--preset", "gpt2", "--method", "bp", "--batch", "0"], "batch"),
    (["estimate", "--preset", "gpt2", "--method", "bp", "--keep", "2"], "keep"),
    (["estimate", "--preset", "gpt2", "--method", "sgdx"], "invalid choice"),
    (["estimate", "--config", "/no/such/config.json", "--method", "bp"], "no file"),
    (["fit", "--budget", "-3GB", "--preset", "gpt2"], "budget"),
    (["fit", "--budget", "lots", "--preset", "gpt2"], "budget"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    r = run(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fit_answers_the_paper_question():
    r = run("fit", "--budget", "17GB", "--preset", "llama-2-7b", "--batch", "8", "--seq", "512", "--json")
    out = json.loads(r.stdout)
    assert out["mezo"]["largest_preset"] == "llama-2-7b"
    assert out["relative_model_size_mezo_over_bp"] > 1


def test_fit_nothing_fits():
    r = run("fit", "--budget", "1MB", "--family", "OPT", "--json")
    out = json.loads(r.stdout)
    assert out["bp"]["largest_preset"] is None and out["mezo"]["largest_preset"] is None


def test_presets_lists_families():
    r = run("presets", "--json")
    fams = json.loads(r.stdout)
    assert {"GPT-2", "OPT", "Llama-2", "Qwen2", "Pythia"} <= set(fams)


def test_import_capacity_is_stdlib_only():
    code = "import sys, capacity, capacity.cli; print(any(m.split('.')[0] in ('torch','transformers','numpy') for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False"


def test_a_budget_without_a_unit_is_refused_with_the_spellings():
    r = run("fit", "--budget", "8", "--preset", "gpt2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no unit" in r.stderr and "8GB" in r.stderr and "8GiB" in r.stderr


def test_fit_without_a_model_answers_across_families():
    r = run("fit", "--budget", "8GB", "--method", "mezo", "--batch", "1", "--seq", "512", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["mezo"]
    from capacity import families, largest_preset
    sc = Scenario(method="mezo", batch=1, seq=512)
    found = {f: largest_preset(f, 8 * 10**9, sc) for f in families()}
    assert res["largest_preset_by_family"] == {f: name for f, (name, _) in found.items()}
    sizes = {name: est.params for name, est in found.values() if name}
    assert res["largest_preset"] == max(sizes, key=sizes.get)


def test_fit_without_a_model_lists_every_way_of_fine_tuning_across_families():
    """The variants table of `fit` with no model: each way's largest preset of any family
    that can run it (it printed empty rows before)."""
    r = run("fit", "--budget", "8GB", "--json")
    assert r.returncode == 0, r.stderr
    from capacity import Scenario, families, largest_preset
    from capacity.inverse import variant_scenario
    rows = json.loads(r.stdout)["variants"]["rows"]
    assert len(rows) > 3
    for row in rows:
        vsc = variant_scenario(row["variant"], Scenario())
        found = []
        for f in families():
            try:
                name, est = largest_preset(f, 8 * 10**9, vsc)
            except ValueError:
                continue
            if name:
                found.append((est.params, name))
        assert row["largest_preset"] == max(found)[1], row["variant"]
    out = run("fit", "--budget", "8GB").stdout
    ways = out[out.index("by way of fine-tuning"):].splitlines()[1:len(rows) + 1]
    assert all("preset " in line for line in ways), ways


def test_family_names_ignore_case():
    lower, exact = (json.loads(run("fit", "--budget", "17GB", "--family", f, "--json").stdout) for f in ("llama-2", "Llama-2"))
    assert lower == exact and lower["mezo"]["largest_preset"] == "llama-2-7b"


def test_attention_defaults_to_sdpa_as_transformers_does():
    r = run("estimate", "--preset", "gpt2", "--method", "mezo", "--json")
    assert json.loads(r.stdout)["scenario"]["attention"] == "sdpa" == Scenario().attention


def test_fit_across_families_names_the_families_it_cannot_answer_for():
    r = run("fit", "--budget", "8GB", "--method", "mezo", "--seq", "4096", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["mezo"]
    assert "GPT-2" in res["families_refused"] and "1,024 positions" in res["families_refused"]["GPT-2"]
    assert res["largest_preset_by_family"]["GPT-2"] is None and res["largest_preset"] is not None


# ------------------------------------------------------------------ what is trained (docs/peft.md)

def test_peft_estimate_json_matches_library_and_peft_count():
    r = run("estimate", "--preset", "llama-2-7b", "--method", "bp", "--peft", "lora", "--lora-targets", "all-linear",
            "--lora-rank", "16", "--weights-bits", "4", "--double-quant", "--keep", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    from capacity.scenario import Peft
    sc = Scenario(method="bp", keep=0.0, peft=Peft(method="lora", lora_rank=16, lora_targets=("all-linear",),
                                                    weights_bits=4, double_quant=True))
    est = estimate(load_preset("llama-2-7b"), sc)
    assert out["peak_bytes"] == est.peak_bytes and sum(out["breakdown"].values()) == out["peak_bytes"]
    # peft's print_trainable_parameters for Llama-2-7B, r=16 on every linear: 39,976,960.
    assert out["trainable_params"] == 39_976_960
    assert out["params"] == parameter_count(load_preset("llama-2-7b")) + out["trainable_params"] == out["active_params"]
    # fp32 adapters, their gradients and AdamW states apart from the frozen 4-bit base.
    assert out["breakdown"]["trainable_weights"] == 4 * out["trainable_params"]
    assert out["breakdown"]["weights"] < parameter_count(load_preset("llama-2-7b"))  # under a byte per weight


@pytest.mark.parametrize("args,word", [
    (["--preset", "llama-2-7b", "--peft", "freeze", "--devices", "2", "--sharding", "fsdp"], "several devices"),
    (["--preset", "llama-2-7b", "--peft", "lora", "--weights-bits", "4", "--devices", "8", "--sharding", "ddp"],
     "quantized base"),
    (["--preset", "mixtral-8x7b", "--peft", "lora"], "mixture of experts"),
    (["--preset", "llama-2-7b", "--peft", "freeze", "--weights-bits", "4"], "frozen"),
    (["--preset", "llama-2-7b", "--peft", "lora", "--lora-targets", ","], "--lora-targets"),
    (["--preset", "llama-2-7b", "--peft", "lora", "--lora-rank", "0"], "rank"),
])
def test_peft_bad_input_is_one_line_exit_2(args, word):
    r = run("estimate", "--method", "bp", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert word in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_lora_over_several_devices_is_capacitys_per_device_estimate():
    r = run("estimate", "--method", "bp", "--preset", "llama-2-7b", "--peft", "lora", "--devices", "8",
            "--sharding", "fsdp", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    from capacity.scenario import Parallel, Peft
    est = estimate(load_preset("llama-2-7b"), Scenario(method="bp", peft=Peft(method="lora"),
                                                       parallel=Parallel(devices=8, sharding="fsdp")))
    assert out["peak_bytes"] == est.peak_bytes and sum(out["breakdown"].values()) == out["peak_bytes"]
    # peft's print_trainable_parameters for Llama-2-7B, r=8 on q_proj and v_proj: 4,194,304
    assert out["trainable_params"] == 4_194_304
    assert out["breakdown"]["all_gather_buffers"] > 0


def test_peft_fit_variants_side_by_side():
    r = run("fit", "--budget", "8GB", "--preset", "llama-2-7b", "--keep", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    rows = {row["variant"]: row for row in out["variants"]["rows"]}
    assert set(rows) == {"BP full", "BP LoRA", "QLoRA", "MeZO full", "MeZO LoRA", "MeZO LoRA 8-bit", "MeZO LoRA 4-bit"}
    size = {k: v["largest_scaled_params"] for k, v in rows.items()}
    # Less to store per parameter: LoRA over full fine-tuning, a 4-bit base over a 16-bit one.
    assert size["BP full"] < size["BP LoRA"] < size["QLoRA"]
    assert size["MeZO LoRA"] < size["MeZO LoRA 8-bit"] < size["MeZO LoRA 4-bit"]
    ratios = {(x["mezo"], x["bp"]): x["ratio"] for x in out["variants"]["ratios"]}
    assert len(ratios) == 4 * 3
    assert ratios[("MeZO LoRA 4-bit", "QLoRA")] == pytest.approx(size["MeZO LoRA 4-bit"] / size["QLoRA"])
