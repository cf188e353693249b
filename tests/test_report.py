"""The compile report: report.html is one offline file whose images all load in a real
browser (headless Chromium), with the PNGs beside it; and the `energy` and `report`
commands on a compiled tiny GPT-2."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spikec.cli import main
from spikec.report import write_report
from test_energy import tiny_transformer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class CharTokenizer:
    """A stand-in tokenizer: one token per character (ids below the tiny graph's vocabulary)."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 11 for c in text]}


def fake_report(t: int = 4) -> dict:
    return {
        "model": "tiny", "family": "gpt2", "timesteps": t, "seq_len": 16, "compile_seconds": 1.5,
        "capture_seconds": 0.5, "node_counts": {"Affine": 5},
        "passes": [{"name": "calibrate", "seconds": 0.25, "stats": {"affines": 5}},
                   {"name": "spike-encode", "seconds": 0.125, "stats": {"neurons": 5}}],
        "simulator_check": {"neuron_layers": 5, "identical_layers": 5, "logits_max_abs_diff": 0.0},
    }


def eval_rows(*ts: int) -> list[dict]:
    return [{"timesteps": t, "ann_ppl": 10.0, "snn_ppl": 10.0 + 8 / t, "ppl_ratio": 1 + 0.8 / t, "cosine": 0.99,
             "top1_agreement": 1 - 1 / t, "tokens": 64, "seconds": 1.0} for t in ts]


def stub_pareto(path: Path) -> Path:
    """A trade-off file shaped as benchmarks/pareto.py writes it (two codings, one point from few_spike.json)."""
    points = {f"{c}_T{t}": {"coding": c, "timesteps": t, "budget": None, "ppl_ratio": 1 + 1 / t,
                            "latency_timesteps_per_token": t,
                            "energy_reduction": {"45nm": 0.5 - t / 100, "45nm-memory": 0.3, "loihi": 0.6}}
              for c, t in (("rate", 8), ("rate", 16), ("binary", 7), ("binary", 8))}
    points["binary_T7"]["energy_reduction"] = {"45nm": 0.59}
    points["binary_T7"]["source"] = "few_spike.json"
    path.write_text(json.dumps({"model": "stub-model", "tokens": 64, "points": points}))
    return path


def data_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


@pytest.fixture(scope="module")
def hand_report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report")
    (d / "eval.json").write_text(json.dumps(eval_rows(4, 8, 16)))
    write_report(d, fake_report(), tiny_transformer(blocks=2), CharTokenizer(), sample_tokens=16,
                 pareto_path=stub_pareto(d / "stub_pareto.json"))
    return d


def test_report_is_one_offline_file_with_its_plots_embedded_and_beside_it(hand_report):
    page = (hand_report / "report.html").read_text()
    files = ["firing_rates.png", "energy.png", "accuracy.png", "raster.png", "pareto.png"]
    for f in files:
        assert (hand_report / f).read_bytes().startswith(PNG_MAGIC)
    assert data_images(page) == [(hand_report / f).read_bytes() for f in files]
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing fetched
    assert "<script" not in page
    for text in ("calibrate", "spike-encode", "45nm-memory", "loihi", "attention energy", "top-1", "Will it fit on Loihi 2"):
        assert text in page


def test_the_trade_off_section_marks_this_network_and_labels_published_figures(hand_report):
    page = (hand_report / "report.html").read_text()
    assert "Trade-off: accuracy, energy, latency" in page and "stub-model" in page
    assert "this network (tiny)" in page and "<td>1.2000</td>" in page  # eval_rows: ppl ratio 1 + 0.8/4 at T=4
    for paper in ("FAS", "SpikeDecoder", "NeurTransformer"):
        assert f"<td>{paper}</td>" in page
    assert "96.63%" in page and "few_spike.json" in page
    assert (hand_report / "pareto.png").read_bytes().startswith(PNG_MAGIC)


def test_no_trade_off_section_without_curve_data(tmp_path):
    write_report(tmp_path, fake_report(), tiny_transformer(), CharTokenizer(), sample_tokens=8,
                 pareto_path=tmp_path / "missing.json")
    assert "Trade-off" not in (tmp_path / "report.html").read_text()
    assert not (tmp_path / "pareto.png").exists()


def test_pass_statistics_are_tables_and_reductions_read_as_less_or_more(tmp_path):
    from spikec.analysis.formatting import reduction_text

    report = fake_report()
    report["passes"][1]["stats"] = {"neurons": {"qkv": 128, "lm_head": 64}, "skipped": [], "scale": 0.123456,
                                    "long": list(range(400))}
    write_report(tmp_path, report, tiny_transformer(), CharTokenizer(), sample_tokens=8)
    page = (tmp_path / "report.html").read_text()
    assert "<td>neurons.qkv</td><td>128</td>" in page and "<td>scale</td><td>0.1235</td>" in page
    assert "... 400 values]" in page and "..." not in page.replace("... 400 values]", "")
    assert "seeded random weights" not in page
    assert reduction_text(-14.592) == "15.6x more" and reduction_text(0.936) == "93.6% less"
    assert reduction_text(None) == "-"


def test_report_without_eval_results_says_how_to_get_them_and_has_no_accuracy_plot(tmp_path):
    write_report(tmp_path, fake_report(), tiny_transformer(), CharTokenizer(), sample_tokens=8)
    page = (tmp_path / "report.html").read_text()
    assert "not evaluated yet" in page and "spikec eval" in page
    assert not (tmp_path / "accuracy.png").exists()
    assert len(data_images(page)) == 4  # firing rates, energy, raster and the shipped trade-off curve


def test_report_takes_energy_figures_from_energy_json_when_present(tmp_path):
    from spikec.backends.simulator import simulate
    from spikec.analysis.counts import count_operations
    import torch

    graph = tiny_transformer()
    counts = count_operations(graph, simulate(graph, torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), 4), positions=7)
    (tmp_path / "energy.json").write_text(json.dumps({"text": "mine.txt", "counts": counts.to_dict()}))
    write_report(tmp_path, fake_report(), graph, CharTokenizer(), sample_tokens=8)
    assert "7 tokens of mine.txt" in (tmp_path / "report.html").read_text()


# --- a real browser -----------------------------------------------------------------------

_PROBE_HEAD = ("<script>window.__errs=[];addEventListener('error',function(e){__errs.push(String(e.message||"
               "(e.target&&String(e.target.src).slice(0,60))||'error'))},true);var __ce=console.error;"
               "console.error=function(){__errs.push(Array.from(arguments).join(' '));__ce.apply(console,arguments)};"
               "</script>")
_PROBE_TAIL = ("<script>addEventListener('load',function(){var r=Array.from(document.images).map(function(i){"
               "return {file:i.dataset.file,complete:i.complete,width:i.naturalWidth}});var p=document.createElement"
               "('pre');p.id='spikec-probe';p.textContent=JSON.stringify({images:r,errors:__errs});"
               "document.body.appendChild(p);console.log('spikec-probe-done')});</script>")


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def render(html_file: Path, workdir: Path) -> tuple[dict, list[str]]:
    """Load a copy of ``html_file`` with a probe script in headless Chromium; return the
    probe's findings (images and errors) and the console lines Chromium logged."""
    page = html_file.read_text()
    probe = workdir / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>", 1))
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    found = re.search(r'<pre id="spikec-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")), console


def test_report_renders_in_headless_chromium_with_every_image_loaded_and_no_errors(hand_report, tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    probe, console = render(hand_report / "report.html", tmp_path)
    assert [i["file"] for i in probe["images"]] == ["firing_rates.png", "energy.png", "accuracy.png", "raster.png",
                                                  "pareto.png"]
    assert all(i["complete"] and i["width"] > 0 for i in probe["images"]), probe["images"]
    assert probe["errors"] == []
    assert [line for line in console if "spikec-probe-done" not in line] == []


def test_the_browser_check_catches_a_broken_image(hand_report, tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed")
    broken = tmp_path / "broken.html"
    page = (hand_report / "report.html").read_text()
    broken.write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    probe, _ = render(broken, tmp_path)
    assert not all(i["complete"] and i["width"] > 0 for i in probe["images"]) or probe["errors"]


# --- the commands on a compiled model ---------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled") / "tiny"
    rc = main(["compile", "gpt2", "--random-weights", "--config", "n_layer=1,n_embd=32,n_head=2", "-T", "4",
               "--seq-len", "16", "--calib-samples", "2", "-o", str(out)])
    assert rc == 0
    return out


def test_compile_writes_report_html_inside_its_output_directory(compiled):
    page = (compiled / "report.html").read_text()
    assert "fold-norm-affine" in page and "spike-encode" in page
    assert len(data_images(page)) == 4  # no eval yet: firing rates, energy, raster, trade-off curve
    assert not list(compiled.parent.glob(".tiny.tmp-*"))


def test_the_compile_report_names_the_output_directory_not_the_temporary_one(compiled):
    page = (compiled / "report.html").read_text()
    assert ".tmp-" not in page
    assert f"spikec eval {compiled}" in html.unescape(page)
    assert "seeded random weights" in page  # compiled with --random-weights


def energy_cells(page: str, model: str) -> tuple[str, str]:
    ann, snn = re.search(rf"<td>{model}</td><td>([^<]+)</td><td>([^<]+)</td>", page).groups()
    return ann, snn


def test_the_report_and_spikec_energy_agree_by_default(compiled, capsys):
    from spikec.analysis.formatting import format_energy

    page = (compiled / "report.html").read_text()  # written by compile, before any energy.json
    assert main(["energy", str(compiled), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["workload"]["tokens"] == 1024
    assert energy_cells(page, "45nm") == (format_energy(est["ann_pj_per_token"]), format_energy(est["snn_pj_per_token"]))
    assert est["loihi_fit"]["neurons"] > 0 and est["loihi_fit"]["cores"] >= 1


def test_energy_command_prints_json_with_the_documented_keys_and_writes_energy_json(compiled, capsys):
    assert main(["energy", str(compiled), "--tokens", "64", "--seq-len", "32", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert {"ann_pj_per_token", "snn_pj_per_token", "reduction", "attention_reduction", "layers"} <= set(est)
    assert est["workload"] == {"tokens": 64, "sequences": 2, "positions": 32, "timesteps": 4}
    assert est["snn_pj_per_token"] > 0 and est["ann_pj_per_token"] > 0
    assert json.loads((compiled / "energy.json").read_text())["estimate"]["model"]["name"] == "45nm"
    assert main(["energy", str(compiled), "--tokens", "32", "--model", "loihi", "--per-op"]) == 0
    out = capsys.readouterr().out
    assert "h_0_attn_qkv" in out and "total" in out and "attention" in out
    assert "Loihi 2 fit (Lava target" in out and "neurocores" in out


def test_report_command_rewrites_the_report_with_eval_and_energy(compiled, capsys):
    (compiled / "eval.json").write_text(json.dumps(eval_rows(4, 8)))
    assert main(["report", str(compiled)]) == 0
    page = (compiled / "report.html").read_text()
    assert len(data_images(page)) == 5 and (compiled / "accuracy.png").is_file()
    assert "from &#x27;spikec energy&#x27;" in page


def test_energy_command_fails_with_one_line_on_bad_models_and_options(compiled, tmp_path, capsys):
    assert main(["energy", str(compiled), "--model", "tpu"]) == 2
    bad = tmp_path / "c.toml"
    bad.write_text("mac_pj = [")
    assert main(["energy", str(compiled), "--model", str(bad)]) == 3
    assert main(["energy", str(tmp_path)]) == 3
    assert main(["energy", str(compiled), "-T", "0"]) == 2
    assert main(["energy", str(compiled), "--seq-len", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("spikec: error:") for line in err)
