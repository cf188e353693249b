"""The command line as a user meets it: compile, eval, run, passes, inspect, plugins and
the one-line errors with their exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spikec.cli import COMMANDS, main

TINY_GPT2 = ["gpt2", "--random-weights", "--config", "n_layer=2,n_embd=64,n_head=4"]
TINY_LLAMA = ["llama", "--config",
              "num_hidden_layers=2,hidden_size=64,num_attention_heads=4,num_key_value_heads=2,intermediate_size=128"]
FAST = ["-T", "8", "--calib-samples", "2", "--seq-len", "32"]
REPO = Path(__file__).resolve().parents[1]


def compile_cli(out: Path, model: list[str], *extra: str) -> int:
    return main(["compile", *model, *FAST, "-o", str(out), *extra])


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "tiny-gpt2"
    assert compile_cli(out, TINY_GPT2) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("spikec: error: ")
    return err[0]


def test_compile_writes_the_output_contract(tiny_gpt2: Path) -> None:
    assert (tiny_gpt2 / "model.nir").is_file()
    assert (tiny_gpt2 / "tokenizer").is_dir()
    report = json.loads((tiny_gpt2 / "report.json").read_text())
    for key in ("model", "timesteps", "passes", "node_counts", "compile_seconds", "firing_rates", "simulator_check"):
        assert key in report
    assert [p["name"] for p in report["passes"]] == ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]
    assert all(p["seconds"] >= 0 for p in report["passes"])
    assert report["node_counts"]["SpikecSignedIF"] == 9  # 4 per block + the LM head
    assert len(report["firing_rates"]) == 9


def test_simulator_reproduces_the_fx_module_spike_for_spike(tiny_gpt2: Path) -> None:
    check = json.loads((tiny_gpt2 / "report.json").read_text())["simulator_check"]
    assert check["identical_layers"] == check["neuron_layers"] == 9
    assert check["logits_max_abs_diff"] == 0.0


def test_compile_of_a_llama_family_model(tmp_path: Path, capsys) -> None:
    assert compile_cli(tmp_path / "llama", TINY_LLAMA) == 0
    out = capsys.readouterr().out  # not a terminal: the steps are plain lines, on stdout (stderr is for errors)
    assert "running passes ..." in out and "lowering to NIR ..." in out
    report = json.loads((tmp_path / "llama" / "report.json").read_text())
    assert report["family"] == "llama"
    assert report["simulator_check"]["identical_layers"] == report["simulator_check"]["neuron_layers"] == 9


def test_eval_json_has_the_documented_keys(tiny_gpt2: Path, capsys) -> None:
    assert main(["eval", str(tiny_gpt2), "--tokens", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("ann_ppl", "snn_ppl", "ppl_ratio", "cosine", "top1_agreement", "timesteps", "tokens"):
        assert key in result
    assert result["timesteps"] == 8 and result["tokens"] == 64
    assert [r["timesteps"] for r in result["curve"]] == [8]  # one shape for any number of T
    assert result["ppl_ratio"] == pytest.approx(result["snn_ppl"] / result["ann_ppl"])
    assert (tiny_gpt2 / "eval.json").is_file()


def test_eval_accuracy_improves_with_timesteps(tiny_gpt2: Path, capsys) -> None:
    assert main(["eval", str(tiny_gpt2), "--tokens", "64", "-T", "2,64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    coarse, fine = result["curve"]
    assert result["timesteps"] == 2 and result["cosine"] == coarse["cosine"]  # the first T at the top level
    assert fine["cosine"] > coarse["cosine"]
    assert fine["cosine"] > 0.99


def test_run_shows_the_spiking_and_the_original_continuation(tiny_gpt2: Path, capsys) -> None:
    assert main(["run", str(tiny_gpt2), "--prompt", "Hello world", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "SNN:" in out and "ANN:" in out


def test_inspect_summarizes_a_nir_file(tiny_gpt2: Path, capsys) -> None:
    assert main(["inspect", str(tiny_gpt2 / "model.nir")]) == 0
    out = capsys.readouterr().out
    assert "SpikecSignedIF" in out and "spikec extension" in out and "Affine" in out


def test_inspect_json_and_all(tiny_gpt2: Path, capsys) -> None:
    assert main(["inspect", str(tiny_gpt2 / "model.nir"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["types"]["SpikecSignedIF"] == 9 and summary["portability"]["portable"] is False
    assert main(["inspect", str(tiny_gpt2 / "model.nir"), "--all"]) == 0
    assert list(summary["shapes"])[-1] in capsys.readouterr().out


def test_passes_lists_builtin_and_plugin_passes(capsys) -> None:
    assert main(["passes", "--plugin", str(REPO / "examples" / "custom_pass.py")]) == 0
    out = capsys.readouterr().out
    for name in ("fold-norm-affine", "calibrate", "spike-encode", "burst-all", "finer-lm-head", "spiking-census"):
        assert name in out
    assert "default = fold-norm-affine,calibrate,burst-all,spike-encode" in out
    assert "--option keys the default pipeline reads:" in out and "burst_spikes" in out


def test_a_plugin_pass_may_not_take_a_builtin_name(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "shadow.py"
    plugin.write_text('import spikec\n\n@spikec.register_pass("calibrate")\ndef mine(gm, ctx):\n    """Mine."""\n')
    assert main(["passes", "--plugin", str(plugin)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a pass named 'calibrate' is built in" in err
    assert main(["passes"]) == 0 and "(no docstring)" not in capsys.readouterr().out  # the built-in one stays


def test_a_pass_registered_in_python_may_not_take_a_builtin_name() -> None:
    script = ("import spikec\n@spikec.register_pass('calibrate')\ndef mine(gm, ctx):\n    'Mine.'\n"
              "spikec.registered_passes()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "InputError: the user pass 'calibrate' (registered in Python) has the name of a built-in pass" in proc.stderr


def test_a_plugin_pass_runs_in_the_pipeline_and_reports_statistics(tmp_path: Path) -> None:
    plugin = REPO / "examples" / "custom_pass.py"
    out = tmp_path / "p"
    assert compile_cli(out, TINY_GPT2, "--plugin", str(plugin), "--passes", "default,spiking-census") == 0
    passes = json.loads((out / "report.json").read_text())["passes"]
    assert passes[-1]["name"] == "spiking-census"
    assert passes[-1]["stats"] == {"neuron_layers": 9, "neurons_per_position": 4 * 64 + 2 * 256 + 64 * 3 + 64 - 64}


def test_the_custom_pass_example_runs_as_a_script() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "custom_pass.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "finer-lm-head" in proc.stdout and "spiking-census" in proc.stdout


def test_unknown_pass_is_a_usage_error_listing_the_known_passes(tmp_path: Path, capsys) -> None:
    assert compile_cli(tmp_path / "x", TINY_GPT2, "--passes", "default,no-such-pass") == 2
    line = one_error_line(capsys)
    assert "no-such-pass" in line and "spike-encode" in line
    assert not (tmp_path / "x").exists()


def test_unknown_model_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert compile_cli(tmp_path / "x", ["no-such-model-anywhere"]) == 3
    assert "no-such-model-anywhere" in one_error_line(capsys)


def test_missing_weights_offline_suggest_random_weights(tmp_path: Path, capsys) -> None:
    assert compile_cli(tmp_path / "x", ["gpt2"]) == 3
    assert "--random-weights" in one_error_line(capsys)


@pytest.mark.parametrize("value", ["0", "-3", "99999"])
def test_bad_timesteps_are_refused(tmp_path: Path, capsys, value: str) -> None:
    assert main(["compile", *TINY_GPT2, "-T", value, "-o", str(tmp_path / "x")]) == 2
    assert "-T" in one_error_line(capsys)


def test_non_integer_timesteps_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compile", *TINY_GPT2, "-T", "eight", "-o", str(tmp_path / "x")])
    assert exc.value.code == 2


@pytest.mark.parametrize("content", [None, "", "   \n"])
def test_missing_or_empty_text_files_are_bad_input(tmp_path: Path, capsys, content: str | None) -> None:
    text = tmp_path / "calib.txt"
    if content is not None:
        text.write_text(content)
    assert compile_cli(tmp_path / "x", TINY_GPT2, "--calib-text", str(text)) == 3
    assert "calib.txt" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_eval_with_an_empty_text_file_is_bad_input(tiny_gpt2: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", str(tiny_gpt2), "--text", str(empty)]) == 3
    assert "empty" in one_error_line(capsys)


def test_existing_output_needs_force_and_is_kept_without_it(tiny_gpt2: Path, capsys) -> None:
    before = (tiny_gpt2 / "model.nir").stat().st_mtime_ns
    assert compile_cli(tiny_gpt2, TINY_GPT2) == 2
    assert "--force" in one_error_line(capsys)
    assert (tiny_gpt2 / "model.nir").stat().st_mtime_ns == before


def test_eval_of_a_directory_that_is_not_a_compile_output(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path)]) == 3
    assert "spikec compile" in one_error_line(capsys)


def test_two_compiles_give_identical_nir_values(tiny_gpt2: Path, tmp_path: Path) -> None:
    from spikec.backends import nirio

    assert compile_cli(tmp_path / "again", TINY_GPT2) == 0
    a, b = nirio.read(tiny_gpt2 / "model.nir"), nirio.read(tmp_path / "again" / "model.nir")
    assert list(a.nodes) == list(b.nodes) and a.edges == b.edges
    for name, node in a.nodes.items():
        for field, value in node.to_dict().items():
            if hasattr(value, "shape"):
                assert (value == b.nodes[name].to_dict()[field]).all(), (name, field)


def test_version_and_python_dash_m() -> None:
    proc = subprocess.run([sys.executable, "-m", "spikec", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and re.fullmatch(r"spikec \S+\n", proc.stdout), proc
    proc = subprocess.run([sys.executable, "-m", "spikec", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "lava-env" in proc.stdout


def undocumented_options(help_text: str) -> list[str]:
    """Entries of argparse's help (two-space indented) with no description beside or under them."""
    lines = [l for l in help_text.splitlines() if l.strip()]
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  ") or line.startswith("   "):
            continue
        entry = line[2:]
        beside = "  " in entry.strip()
        under = i + 1 < len(lines) and lines[i + 1].startswith(" " * 4) and not lines[i + 1].strip().startswith("-")
        if not (beside or under) and not entry.startswith("{"):
            missing.append(entry.strip())
    return missing


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert undocumented_options(text) == [], text


def test_debug_is_accepted_after_the_command(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "missing.nir"), "--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err
    assert main(["--debug", "inspect", str(tmp_path / "missing.nir")]) == 3
    assert "Traceback" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.nir")]) == 3
    assert "Traceback" not in one_error_line(capsys)


def test_the_commands_run_the_python_api_with_the_cli_flag_names(tiny_gpt2: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """The CLI is a thin layer over docs/api.md: each command parses, calls spikec.compile or
    spikec.load(DIR).<method>, and prints; errors raised in the API name the flags."""
    import spikec
    from spikec.compiler import CLI_FLAGS

    calls: list[tuple[str, dict]] = []
    real_compile, real_load = spikec.compile, spikec.load
    monkeypatch.setattr(spikec, "compile", lambda *a, **k: calls.append(("compile", k)) or real_compile(*a, **k))
    monkeypatch.setattr(spikec, "load", lambda *a, **k: calls.append(("load", k)) or real_load(*a, **k))
    assert compile_cli(tmp_path / "c", TINY_GPT2) == 0
    assert main(["eval", str(tiny_gpt2), "--tokens", "32", "--json"]) == 0
    assert main(["run", str(tiny_gpt2), "--prompt", "Hi", "--max-new-tokens", "1"]) == 0
    assert main(["energy", str(tiny_gpt2), "--tokens", "32", "--json"]) == 0
    assert main(["report", str(tiny_gpt2)]) == 0
    assert [c for c, _ in calls] == ["compile", "load", "load", "load", "load"]
    assert calls[0][1]["names"] == CLI_FLAGS and calls[0][1]["quiet"] is False
    assert all(k["names"]["reference"] == "--model" for c, k in calls[1:])
    capsys.readouterr()
    # an error the API raises (its bound, not argparse's) names the flag, not the argument
    assert main(["eval", str(tiny_gpt2), "--backend", "lava", "-T", "4,8"]) == 2
    assert one_error_line(capsys) == "spikec: error: --backend lava takes one -T value"
