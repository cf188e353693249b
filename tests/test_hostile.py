"""The hostile-user round (issue 19): huge texts, odd output paths, signals, full disks,
plugins, damaged files and strange strings each end with nothing of the user's lost, nothing
left behind, one line on stderr and the documented exit code (docs/errors.md).

Sections follow the issue: streaming text (5), outputs (6-10), wrong answers and wrong exit
codes (11, 13), one line everywhere (14)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikec import outputs
from spikec.cli import main
from spikec.core.errors import InputError, ResourceError, from_os_error, one_line
from spikec.frontend.models import load_model
from spikec.text import (
    CALIBRATION_TEXT, HELDOUT_TEXT, NUMPY_TEXT, embedded_text, leading_tokens, read_text, token_stream,
)
from test_cli import FAST, TINY_GPT2, compile_cli, one_error_line

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "tiny"
    assert compile_cli(out, TINY_GPT2) == 0
    return out


@pytest.fixture
def copy_of_tiny(tiny: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(tiny, target)
    return target


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return load_model("gpt2", random_weights=True, config_overrides={"n_layer": "1", "n_embd": "32",
                                                                     "n_head": "2"}).tokenizer


def exit_code(argv: list[str]) -> int:
    """``main``'s code, argparse's included (it raises SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return 0 if e.code is None else int(e.code)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.suffix == ".tmp")


def write_plugin(path: Path, body: str, name: str) -> Path:
    """A plugin file registering the pass ``name`` (unique per test: the registry is global)."""
    path.write_text("import os, sys, time\nimport spikec\n\n"
                    f"@spikec.register_pass({name!r})\ndef the_pass(gm, ctx):\n    \"\"\"A hostile pass.\"\"\"\n"
                    + "".join(f"    {line}\n" for line in body.splitlines()))
    return path


# --- 5. streaming text --------------------------------------------------------------------


@pytest.mark.parametrize("name", [HELDOUT_TEXT, CALIBRATION_TEXT, NUMPY_TEXT])
@pytest.mark.parametrize("first", [7, 1000, 16384])
def test_streamed_tokens_are_those_of_the_whole_embedded_text(gpt2_tokenizer, name: str, first: int) -> None:
    whole = token_stream(gpt2_tokenizer, embedded_text(name))
    for n in (2, 32, 1024, 4096, whole.numel(), whole.numel() + 10):
        assert torch.equal(leading_tokens(gpt2_tokenizer, f"embedded:{name}", CALIBRATION_TEXT, n, first=first),
                           whole[:n]), n


def test_streamed_file_decodes_as_read_text_across_chunks(gpt2_tokenizer, tmp_path: Path) -> None:
    # CRLF pairs, multi-byte characters and invalid bytes fall on chunk boundaries
    path = tmp_path / "odd.txt"
    path.write_bytes((b"caf\xc3\xa9 line\r\nnext\rthird \xff\xfe bytes \xe2\x82\xac\r\n" * 400))
    whole = token_stream(gpt2_tokenizer, read_text(path, HELDOUT_TEXT))
    for first in (1, 5, 64):
        assert torch.equal(leading_tokens(gpt2_tokenizer, path, HELDOUT_TEXT, whole.numel() + 1, first=first), whole)
        assert torch.equal(leading_tokens(gpt2_tokenizer, path, HELDOUT_TEXT, 50, first=first), whole[:50])


def test_a_huge_text_file_for_a_few_tokens_is_read_only_as_far_as_needed(gpt2_tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:  # 4 GiB, sparse: reading it all would take long and OOM
        f.write(embedded_text(HELDOUT_TEXT).encode())
        f.truncate(4 << 30)
    start = time.perf_counter()
    ids = leading_tokens(gpt2_tokenizer, path, HELDOUT_TEXT, 32)
    assert time.perf_counter() - start < 2
    assert torch.equal(ids, token_stream(gpt2_tokenizer, embedded_text(HELDOUT_TEXT))[:32])


def test_eval_of_a_huge_text_file_for_32_tokens(tiny: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.write(embedded_text(HELDOUT_TEXT).encode())
        f.truncate(4 << 30)
    assert main(["eval", str(tiny), "--text", str(path), "--tokens", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 32


@pytest.mark.parametrize("kind", ["fifo", "whitespace", "directory"])
def test_a_text_that_is_not_a_readable_file_of_text_is_one_line_exit_3(tiny: Path, tmp_path: Path, capsys,
                                                                        kind: str) -> None:
    path = tmp_path / "text.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "whitespace":
        path.write_text(" \n\t" * 100000)
    else:
        path.mkdir()
    assert main(["eval", str(tiny), "--text", str(path), "--tokens", "32"]) == 3
    assert "text.txt" in one_error_line(capsys)


# --- 6-10. outputs --------------------------------------------------------------------------


def test_force_does_not_delete_a_directory_spikec_did_not_write(tmp_path: Path, capsys) -> None:
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "main.py").write_text("print('my work')")
    assert compile_cli(project, TINY_GPT2, "--force") == 2
    assert "not written by spikec" in one_error_line(capsys)
    assert (project / "main.py").read_text() == "print('my work')"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["empty", "spikec output", "full export"])
def test_force_replaces_an_empty_directory_or_spikec_output(tiny: Path, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    if kind == "spikec output":
        shutil.copytree(tiny, target)
    else:
        target.mkdir()
        if kind == "full export":
            shutil.copyfile(tiny / "model.nir", target / "model.nir")
    assert compile_cli(target, TINY_GPT2, "--force") == 0
    assert (target / "report.json").is_file() and leftovers(tmp_path) == []


def test_export_nir_force_refuses_a_directory_spikec_did_not_write(tiny: Path, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export-nir", str(tiny), "--profile", "full", "-o", str(mine), "--force"]) == 2
    one_error_line(capsys)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["export-nir", str(tiny), "--profile", "full", "-o", str(tmp_path / "exp")]) == 0
    assert main(["export-nir", str(tiny), "--profile", "full", "-o", str(tmp_path / "exp"), "--force"]) == 0


@pytest.mark.parametrize("kind", [".", "..", "/", "sub/..", "file", "dangling symlink", "symlink to a directory"])
def test_output_paths_spikec_must_not_write_are_refused_up_front(tmp_path: Path, monkeypatch, capsys,
                                                                 kind: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "file").write_text("a file")
    (tmp_path / "dangling symlink").symlink_to(tmp_path / "nowhere")
    (tmp_path / "symlink to a directory").symlink_to(tmp_path / "sub")
    before = sorted(os.listdir(tmp_path))
    assert compile_cli(Path(kind), TINY_GPT2, "--force") == 2
    one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "file").read_text() == "a file"


def test_a_directory_that_appears_during_the_run_is_never_replaced(tmp_path: Path, capsys) -> None:
    target = tmp_path / "out"
    plugin = write_plugin(tmp_path / "racer.py", f"os.makedirs({str(target)!r})\nopen(os.path.join("
                          f"{str(target)!r}, 'theirs.txt'), 'w').write('the other run')", name="racer")
    assert compile_cli(target, TINY_GPT2, "--plugin", str(plugin), "--passes", "default,racer") == 2
    assert "appeared" in one_error_line(capsys)
    assert sorted(os.listdir(target)) == ["theirs.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False])
def test_rename_noreplace_refuses_an_existing_target(tmp_path: Path, monkeypatch, renameat2: bool) -> None:
    if not renameat2:
        monkeypatch.setattr(outputs, "_renameat2", lambda: None)
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep").write_text("kept")
    with pytest.raises(FileExistsError):
        outputs.rename_noreplace(tmp_path / "src", tmp_path / "dst")
    outputs.rename_noreplace(tmp_path / "src", tmp_path / "new")
    assert (tmp_path / "new").is_dir() and (tmp_path / "dst" / "keep").read_text() == "kept"


def test_two_concurrent_compiles_to_one_output_the_second_exits_2(tmp_path: Path) -> None:
    target = tmp_path / "out"
    # the first run waits in its last pass until the second has written the output
    slow = write_plugin(tmp_path / "slow.py", "while os.environ.get('WAIT') and time.time() < float(os.environ['WAIT']):\n"
                        f"    if os.path.exists({str(target / 'report.json')!r}): break\n    time.sleep(0.1)", name="slow")
    argv = [sys.executable, "-m", "spikec.cli", "compile", *TINY_GPT2, *FAST, "-o", str(target),
            "--plugin", str(slow), "--passes", "default,slow"]
    first = subprocess.Popen(argv, env={**ENV, "WAIT": str(time.time() + 240)}, cwd=REPO, stderr=subprocess.PIPE,
                             text=True)
    second = subprocess.run(argv, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    _, err = first.communicate(timeout=300)
    assert second.returncode == 0, second.stderr  # the fast one finished first
    assert first.returncode == 2, err
    assert "appeared" in err.strip().splitlines()[-1]
    assert leftovers(tmp_path) == [] and (target / "report.json").is_file()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(tmp_path: Path, sig: int, code: int) -> None:
    started = tmp_path / "started"
    slow = write_plugin(tmp_path / "slow.py", f"open({str(started)!r}, 'w').close()\ntime.sleep(60)", name="slow")
    target = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spikec.cli", "compile", *TINY_GPT2, *FAST, "-o", str(target),
                             "--plugin", str(slow), "--passes", "default,slow"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"spikec: interrupted by {signal.Signals(sig).name}"
    assert not target.exists() and leftovers(tmp_path) == []


def test_temporary_trees_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-abcd1234"
    live = tmp_path / f".out.tmp-{os.getppid()}-abcd1234"
    foreign = tmp_path / f".notes.tmp-{pid}-NOT_OURS"  # not a name spikec makes
    for d in (stale, live, foreign):
        d.mkdir()
        (d / "model.nir").write_text("partial")
    assert compile_cli(tmp_path / "out", TINY_GPT2) == 0
    assert not stale.exists() and live.exists() and foreign.exists()


@pytest.mark.parametrize("name", ["eval.json", "report.html", "firing_rates.png"])
def test_a_planted_symlink_is_replaced_not_followed(copy_of_tiny: Path, tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copy_of_tiny / name).unlink(missing_ok=True)
    (copy_of_tiny / name).symlink_to(victim)
    command = ["eval", str(copy_of_tiny), "--tokens", "32"] if name == "eval.json" else ["report", str(copy_of_tiny)]
    assert main(command) == 0
    assert victim.read_text() == "precious"
    assert not (copy_of_tiny / name).is_symlink() and leftovers(copy_of_tiny) == []


@pytest.mark.parametrize("command", ["eval", "energy"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_figures_that_cannot_be_saved_are_shown_and_exit_5(tiny: Path, monkeypatch, capsys, command: str,
                                                         err: int) -> None:
    def refuse(path, data):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr("spikec.outputs.write_atomic", refuse)
    assert main([command, str(tiny), "--tokens", "32"]) == 5
    captured = capsys.readouterr()
    assert ("ANN ppl" in captured.out and "(32 tokens)" in captured.out) if command == "eval" else \
        "pJ" in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("spikec")]  # tqdm's progress aside
    assert len(lines) == 1 and lines[0].startswith("spikec: error: the figures above were not saved")


def test_output_directories_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert compile_cli(tmp_path / "out", TINY_GPT2) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "report.html").stat().st_mode & 0o777 == 0o644


# --- 11, 13. wrong answers and wrong exit codes ------------------------------------------------------


BAD_NUMBERS = [
    ("compile", ["-T", "0"]), ("compile", ["-T", "3000000000"]), ("compile", ["--seq-len", "1"]),
    ("compile", ["--seed", str(2**70)]), ("compile", ["--seed", "-1"]), ("compile", ["--calib-samples", "0"]),
    ("eval", ["-T", "3000000000"]), ("eval", ["-T", "8,0"]), ("eval", ["-T", ","]), ("eval", ["--seq-len", "1"]),
    ("eval", ["--tokens", "1"]), ("eval", ["--tokens", "ten"]), ("run", ["--max-new-tokens", "0"]),
    ("run", ["-T", "-4"]), ("energy", ["-T", "0"]), ("energy", ["--tokens", "1"]),
    ("finetune", ["--seed", str(2**70)]), ("finetune", ["--steps", "-1"]), ("finetune", ["--batch", "0"]),
]


@pytest.mark.parametrize("command,values", BAD_NUMBERS, ids=[" ".join([c, *v]) for c, v in BAD_NUMBERS])
def test_every_number_is_range_checked_in_one_argparse_line(tiny: Path, capsys, command: str,
                                                            values: list[str]) -> None:
    argv = {"compile": ["compile", *TINY_GPT2, "-o", "never"], "eval": ["eval", str(tiny)],
            "run": ["run", str(tiny), "--prompt", "hi"], "energy": ["energy", str(tiny)],
            "finetune": ["finetune", *TINY_GPT2, "--method", "qcfs", "-o", "never"]}[command]
    assert exit_code([*argv, *values]) == 2
    assert values[0] in one_error_line(capsys)
    assert not Path("never").exists()


@pytest.mark.parametrize("body,expected", [
    ("sys.exit(0)", "called sys.exit(0)"),
    ("raise SystemExit('bye')", "called sys.exit"),
    ("raise ValueError('the plugin is broken')", "ValueError: the plugin is broken"),
    ("return 42", "returned int"),
    ("return 'not a graph'", "returned str"),
])
def test_a_failing_plugin_pass_is_exit_3_naming_plugin_and_pass(tmp_path: Path, capsys, body: str,
                                                              expected: str) -> None:
    name = f"hostile-{tmp_path.name}"
    plugin = write_plugin(tmp_path / "bad_plugin.py", body, name)
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--plugin", str(plugin), "--passes", f"default,{name}") == 3
    line = one_error_line(capsys)
    assert expected in line and f"'{name}'" in line and "bad_plugin.py" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_plugin_that_exits_while_imported_is_exit_3(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--plugin", str(plugin)) == 3
    assert "exits.py" in one_error_line(capsys)


@pytest.mark.parametrize("option,expected", [
    ("burst_spike=3", "--option burst_spike: not read by any pass"),  # a typo of burst_spikes
    ("ssa_rank=4", "--option ssa_rank: not read by any pass"),  # an SSA key without --attention ssa
    ("range=bogus", "option range must be one of absmax, percentile"),
])
def test_an_option_no_pass_reads_or_a_bad_value_is_a_usage_error(tmp_path: Path, capsys, option: str,
                                                                   expected: str) -> None:
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--option", option) == 2
    line = one_error_line(capsys)
    assert expected in line
    assert "burst_spikes" in line or "range" in line  # the valid keys or values are named
    assert not (tmp_path / "out").exists()


def test_a_pipeline_with_a_plugin_pass_takes_any_option_key(tmp_path: Path) -> None:
    name = f"reads-anything-{tmp_path.name}"
    plugin = write_plugin(tmp_path / "reader.py", "assert ctx.option('my_key') == 7", name)
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--plugin", str(plugin), "--passes", f"default,{name}",
                       "--option", "my_key=7") == 0


@pytest.mark.parametrize("passes", [",", " , ,"])
def test_an_empty_pass_list_is_a_usage_error(tmp_path: Path, capsys, passes: str) -> None:
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--passes", passes) == 2
    assert "--passes" in one_error_line(capsys)


@pytest.mark.parametrize("err,code", [
    (errno.ENOSPC, 5), (errno.EDQUOT, 5), (errno.ENOMEM, 5), (errno.EMFILE, 5), (errno.EROFS, 5),
    (errno.EACCES, 3), (errno.EPERM, 3), (errno.ENAMETOOLONG, 3), (errno.ENOTDIR, 3), (errno.ENOENT, 3),
    (errno.EISDIR, 3), (errno.ELOOP, 3),
])
def test_os_errors_map_to_3_or_5_by_errno(err: int, code: int) -> None:
    error = from_os_error(OSError(err, os.strerror(err), "some/file"))
    assert error.exit_code == code and os.strerror(err) in str(error)
    assert isinstance(error, ResourceError if code == 5 else InputError)


def test_a_full_disk_during_compile_is_exit_5_and_leaves_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    def full(path, graph, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("spikec.compiler.nirio.write", full)
    assert compile_cli(tmp_path / "out", TINY_GPT2) == 5
    assert "No space left" in one_error_line(capsys)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["parent is a file", "name too long"])
def test_unusable_output_paths_are_exit_3(tmp_path: Path, capsys, kind: str) -> None:
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out" if kind == "parent is a file" else tmp_path / ("n" * 300)
    assert compile_cli(target, TINY_GPT2) == 3
    one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


BAD_REPORTS = {
    "not JSON": "{", "binary": b"\xff\xfe\x00garbage", "a list": "[]", "no source": '{"timesteps": 8}',
    "source not a spec": '{"source": 1, "timesteps": 8}',
    "huge timesteps": '{"source": {"name": "gpt2"}, "timesteps": 3000000000}',
    "timesteps a string": '{"source": {"name": "gpt2"}, "timesteps": "8"}',
    "bad overrides": '{"source": {"name": "gpt2", "random_weights": true, "config_overrides": {"n_layer": "x"}},'
                     ' "timesteps": 8}',
    "huge integer": '{"source": {"name": "gpt2"}, "timesteps": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("kind", list(BAD_REPORTS))
def test_a_damaged_report_json_is_exit_3(copy_of_tiny: Path, capsys, kind: str) -> None:
    content = BAD_REPORTS[kind]
    path = copy_of_tiny / "report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["eval", str(copy_of_tiny), "--tokens", "32"]) == 3
    assert "report.json" in one_error_line(capsys)


ENERGY_CONSTANTS = {
    "huge integer.json": '{"mac_pj": ' + "9" * 400 + "}",
    "too many digits.json": '{"mac_pj": ' + "9" * 5000 + "}",
    "huge integer.toml": "mac_pj = " + "9" * 400 + "\n",
    "not UTF-8.toml": b"mac_pj = \xff\n",
    "negative.toml": "add_pj = -1\n",
}


@pytest.mark.parametrize("name", list(ENERGY_CONSTANTS))
def test_bad_energy_constants_are_exit_3(tiny: Path, tmp_path: Path, capsys, name: str) -> None:
    content = ENERGY_CONSTANTS[name]
    path = tmp_path / name.replace(" ", "-")
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["energy", str(tiny), "--model", str(path), "--tokens", "32"]) == 3
    line = one_error_line(capsys)
    assert path.name in line and len(line) < 1000


def test_a_prompt_longer_than_the_models_positions_is_one_line(tiny: Path, capsys) -> None:
    assert main(["run", str(tiny), "--prompt", "word " * 1100, "--max-new-tokens", "2"]) == 3
    assert "positions" in one_error_line(capsys)
    assert main(["run", str(tiny), "--prompt", "word " * 1023, "--max-new-tokens", "3"]) == 3
    one_error_line(capsys)


# --- 14. one line everywhere ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["compile"], ["no-such-command"], ["eval", "dir", "--no-such-option"], ["eval", "dir", "--backend", "tpu"],
    ["compile", "gpt2", "--config", "novalue"], ["--debug"],
])
def test_argparse_errors_are_one_line(capsys, argv: list[str]) -> None:
    assert exit_code(argv) == 2
    one_error_line(capsys)


def test_a_plugin_message_cannot_forge_a_line_and_is_truncated(tmp_path: Path, capsys) -> None:
    plugin = write_plugin(tmp_path / "forger.py", "raise RuntimeError('x\\nspikec: error: forged\\r\\n' + 'y' * 20_000_000)",
                          "forger")
    assert compile_cli(tmp_path / "out", TINY_GPT2, "--plugin", str(plugin), "--passes", "default,forger") == 3
    line = one_error_line(capsys)
    assert line.count("spikec: error:") == 2 and len(line) < 1000  # the forged text stays inside the one line


def test_an_internal_error_with_a_multi_line_message_is_one_line(tiny: Path, monkeypatch, capsys) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("HDF5-DIAG: Error detected\n  #000: H5F.c line 1\n    major: File accessibilty")

    monkeypatch.setattr("spikec.evaluate.evaluate", crash)
    assert main(["eval", str(tiny), "--tokens", "32"]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikec: internal error: RuntimeError: HDF5-DIAG")


def test_one_line_flattens_control_characters_and_truncates() -> None:
    assert one_line("a\nb\r\nc\x00d\u2028e\tf") == "a b c d e f"
    assert len(one_line("z" * 10_000)) == 300 and one_line("z" * 10_000).endswith("...")


def test_a_fifo_named_nir_is_refused_by_inspect_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.nir"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "spikec.cli", "inspect", str(fifo)], capture_output=True, text=True,
                          timeout=60, env=ENV, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a regular file" in lines[0]
