"""`python -m capacity validate`: the --json contract, progress events, exit codes, the
child-process runner (time limit, cancel). Tiny configs on the CPU."""

import json
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from capacity.validation import cli  # noqa: E402
from capacity.validation.runner import ROOT, ValidationRun  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 64}
REQUIRED_KEYS = {"measured_peak_bytes", "predicted_peak_bytes", "error_pct", "breakdown", "losses",
                 "step_seconds", "device"}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_torch_is_not_imported_by_the_capacity_command_line():
    code = ("import sys, capacity, capacity.cli; capacity.cli.build_parser(); "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_json_contract_and_progress_events(tiny_config):
    """Through the real entry point, in a child process, as scripts and the app use it."""
    events = []
    run = ValidationRun(["--config", str(tiny_config), "--method", "bp", "--optimizer", "momentum",
                         "--batch", "2", "--seq", "16", "--dtype", "fp32", "--keep", "0.5",
                         "--steps", "3", "--device", "cpu", "--data", "sample"],
                        time_limit_s=120, on_event=events.append)
    result = run.wait()
    assert run.status == "done" and run.returncode == 0, result
    assert REQUIRED_KEYS <= set(result)
    assert result["device"] == "cpu" and len(result["losses"]) == 3 and len(result["step_seconds"]) == 3
    assert all(isinstance(x, float) for x in result["losses"])
    assert set(result["breakdown"]) == {"measured", "predicted", "comparable"}
    comparable = result["breakdown"]["comparable"]
    assert sum(comparable["predicted"].values()) == result["predicted_peak_bytes"]
    assert sum(comparable["measured"].values()) == result["measured_peak_bytes"]
    assert result["checkpointed_layers"] == [0]
    assert result["measured_peak_bytes"] > 0
    if result["predicted_peak_bytes"] is not None:
        expected = 100 * (result["predicted_peak_bytes"] - result["measured_peak_bytes"]) / result["measured_peak_bytes"]
        assert result["error_pct"] == pytest.approx(expected)
    assert events and events[-1]["event"] == "progress" and events[-1]["step"] == events[-1]["total"] == 3


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_config_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama", "hidden_size": "wide"}')
    code, out, err = run_cli(["--config", str(bad), "--method", "bp", "--json", "--progress", "none"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert last_json(out)["exit_code"] == 2
    code, _, _ = run_cli(["--preset", "no-such-model", "--method", "bp", "--progress", "none"], capsys)
    assert code == 2
    code, _, _ = run_cli(["--preset", "gpt2", "--method", "bp", "--seq", "4096", "--progress", "none"], capsys)
    assert code == 2   # beyond GPT-2's 1024 learned positions
    code, _, err = run_cli(["--preset", "gpt2", "--method", "bp", "--dtype", "fp32", "--mixed-precision",
                            "--progress", "none"], capsys)
    assert code == 2 and "--mixed-precision" in err


def test_missing_model_dir_exits_4(tmp_path, capsys):
    code, out, err = run_cli(["--model-dir", str(tmp_path / "nowhere"), "--method", "mezo", "--json",
                              "--progress", "none"], capsys)
    assert code == 4 and "not found" in err
    code, _, err = run_cli(["--model-dir", str(tmp_path), "--method", "mezo", "--progress", "none"], capsys)
    assert code == 4 and "config.json" in err


def test_lora_without_targets_on_a_model_peft_has_no_default_for_names_the_linears(capsys):
    """peft's own error ("Please specify `target_modules`") names no module (seen on a GPU run
    of Phi-3); validate refuses before building, naming the layer's linears."""
    code, out, err = run_cli(["--preset", "phi-3-mini-4k", "--method", "bp", "--peft", "lora", "--device", "trace",
                              "--dry-run", "--json", "--progress", "none"], capsys)
    assert code == 2 and "--lora-targets" in err and "qkv_proj" in err and last_json(out)["exit_code"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_exits_3(tiny_config, capsys):
    code, out, err = run_cli(["--config", str(tiny_config), "--method", "bp", "--device", "cuda", "--json",
                              "--progress", "none"], capsys)
    assert code == 3 and last_json(out)["exit_code"] == 3 and "CUDA" in err


def test_model_dir_with_weights_loads_them(tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    from capacity.validation.models import hf_config
    AutoModelForCausalLM.from_config(hf_config(TINY)).save_pretrained(tmp_path)
    code, out, _ = run_cli(["--model-dir", str(tmp_path), "--method", "inference", "--dtype", "fp32",
                            "--seq", "16", "--steps", "2", "--device", "cpu", "--json", "--progress", "none"],
                           capsys)
    result = last_json(out)
    assert code == 0 and result["model"] == tmp_path.name and len(result["losses"]) == 2


def test_out_of_memory_is_a_result_exit_5(tiny_config, capsys, monkeypatch):
    from capacity.validation import steps

    def oom_on_second_forward(self, ids):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            self.phase = "backward"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, ids)
    original = steps.Stepper.step
    monkeypatch.setattr(steps.Stepper, "step", oom_on_second_forward)
    code, out, err = run_cli(["--config", str(tiny_config), "--method", "bp", "--device", "cpu", "--json",
                              "--progress", "none", "--seq", "16", "--loop", "plain"], capsys)
    result = last_json(out)
    assert code == 5 and result["oom"] is True
    assert result["message"].startswith("out of memory at step 2 (backward)") and ", predicted " in result["message"]


def test_timeout_exits_6(capsys):
    code, out, err = run_cli(["--preset", "llama-2-7b", "--method", "mezo", "--device", "trace", "--steps", "50",
                              "--timeout", "0.5", "--json", "--progress", "none"], capsys)
    assert code == 6 and last_json(out)["timed_out"] is True


def test_runner_cancel_stops_the_child():
    started = threading.Event()
    run = ValidationRun(["--preset", "llama-2-7b", "--method", "mezo", "--device", "trace", "--steps", "50"],
                        time_limit_s=120, on_event=lambda e: e["step"] >= 1 and started.set())
    assert started.wait(90), "no progress event from the child"
    run.cancel()
    result = run.wait()
    assert run.status == "cancelled" and result["message"] == "cancelled"
    assert run.returncode is not None


def test_the_text_report_compares_the_same_classes_on_both_sides():
    """GPT-2 BP on the CPU: MemTracker files Adam's step temporary with the optimizer
    states, the model with the temporaries; the report sets the classes both can name."""
    MB = 10**6
    comparable = {"measured": {"weights": 250 * MB, "gradients": 250 * MB, "optimizer_states": 750 * MB,
                               "activations_and_temporaries": 10 * MB},
                  "predicted": {"weights": 250 * MB, "gradients": 250 * MB, "optimizer_states": 750 * MB,
                                "activations_and_temporaries": 10 * MB}}
    result = {"model": "gpt2", "method": "bp", "optimizer": "adamw", "batch": 1, "seq": 128, "dtype": "bf16",
              "mixed_precision": False, "keep": 1.0, "attention": "sdpa", "device": "cpu",
              "measured_peak_bytes": 1260 * MB, "predicted_peak_bytes": 1260 * MB, "error_pct": -0.0001,
              "breakdown": {"measured": {"optimizer_states": 750 * MB, "temporaries": 0},
                            "predicted": {"optimizer_states": 500 * MB, "temporaries": 250 * MB},
                            "comparable": comparable},
              "losses": [1.0, 1.0], "step_seconds": [0.1, 0.1]}
    text = cli.format_result(result)
    assert "activations_and_temporaries" in text and "temporaries " not in text.replace("_and_temporaries", "")
    row = next(line for line in text.splitlines() if line.startswith("optimizer_states"))
    assert row.count("0.75 GB") == 2
    assert "-0.00 %" not in text and "+0.00 %" in text


def test_a_config_json_is_named_by_its_folder(tmp_path):
    from capacity.validation.models import resolve_model
    folder = tmp_path / "my-tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "other.json").write_text(json.dumps(TINY))
    assert resolve_model(folder / "config.json")[0].name == "my-tiny-llama"
    assert resolve_model(tmp_path / "other.json")[0].name == "other"
