"""``spikec eval --ranks N``: the simulator as a pipeline over torch.distributed ranks gives the
spikes and figures of one process; how the graph is cut; what crosses a cut; the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikec import distributed
from spikec.backends.simulator import Simulator
from spikec.backends.simulator.pipeline import (
    crossing, decode_values, encode_values, node_cost, partition,
)
from spikec.backends.simulator.streaming import Spikes
from spikec.backends.simulator.values import Value
from spikec.cli import main
from spikec.core.errors import ResourceError, UsageError
from spikec.outputs import read_compiled

TINY = ["gpt2", "--random-weights", "--config", "n_layer=2,n_embd=32,n_head=2", "-T", "4", "--seq-len", "16",
        "--calib-samples", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks") / "tiny"
    assert main(["compile", *TINY, "-o", str(out)]) == 0
    return out


@pytest.fixture
def sim(tiny: Path) -> Simulator:
    return Simulator(read_compiled(tiny)[2])


def without_seconds(figures: dict) -> dict:
    return {k: without_seconds(v) if isinstance(v, dict) else [without_seconds(x) for x in v] if k == "curve" else v
            for k, v in figures.items() if k != "seconds"}


def test_two_gloo_ranks_print_and_write_the_figures_of_one_process(tiny: Path, capsys, one_thread) -> None:
    args = ["eval", str(tiny), "--json", "--tokens", "48", "--seq-len", "16", "-T", "2,4"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    one_file = json.loads((tiny / "eval.json").read_text())
    (tiny / "eval.json").unlink()
    assert main([*args, "--ranks", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert without_seconds(two) == without_seconds(one)  # exactly: ppl, cosine, top-1, spikes per neuron step
    assert [without_seconds(r) for r in json.loads((tiny / "eval.json").read_text())] == \
           [without_seconds(r) for r in one_file]


def test_pipeline_runs_are_the_single_process_runs(tiny: Path, sim: Simulator, one_thread) -> None:
    inputs = [torch.randint(0, 50257, (1, 16)) for _ in range(5)]  # more than the 3 ranks hold in flight
    with distributed.pipeline_head(sim.graph, str(tiny), 3, "cpu") as head:
        for t in (1, 4):
            pairs = [(head.run(inputs[0], t), sim.run(inputs[0], t))]
            pairs += zip(head.run_many(inputs, t), sim.run_many(inputs, t), strict=True)
            for got, want in pairs:
                assert list(got.spike_counts.items()) == list(want.spike_counts.items())  # same order too
                assert list(got.firing_rates.items()) == list(want.firing_rates.items())
                assert got.operations == want.operations
                assert got.outputs.keys() == want.outputs.keys()
                assert all(torch.equal(got.outputs[n], want.outputs[n]) for n in want.outputs)


def test_stages_run_one_after_another_in_one_process_are_the_whole_run(sim: Simulator) -> None:
    ids = torch.randint(0, 50257, (1, 16))
    want = sim.run(ids, 4)
    for ranks in (2, 3, 4):
        kept, counts, outputs = {}, {}, {}
        for i, stage in enumerate(partition(sim, ranks)):
            result, kept = sim.run_stage(stage.nodes, kept, set(stage.outgoing), 4, inputs=ids if i == 0 else None)
            counts.update(result.spike_counts)
            outputs.update(result.outputs)
        assert counts == want.spike_counts
        assert torch.equal(outputs["output"], want.output)


def test_stages_are_contiguous_balanced_runs_of_the_order_cut_between_blocks(sim: Simulator) -> None:
    assert [s.nodes for s in partition(sim, 1)] == [sim.order]
    stages = partition(sim, 2)
    assert [n for s in stages for n in s.nodes] == sim.order
    first, second = stages
    assert first.outgoing == second.incoming == ["h_1_add_mlp"]  # the residual stream after the last block
    assert first.incoming == second.outgoing == []
    costs = [sum(node_cost(sim.graph.nodes[n]) for n in s.nodes) for s in stages]
    assert max(costs) < 0.6 * sum(costs)  # embedding + blocks against ln_f + lm_head, by parameters
    for ranks in range(2, 10):
        cut = 0
        for stage in partition(sim, ranks)[:-1]:
            cut += len(stage.nodes)
            assert len(crossing(sim, cut)) == 1


def test_more_ranks_than_places_to_cut_is_one_line(tiny: Path, sim: Simulator, capsys) -> None:
    with pytest.raises(UsageError, match="at most 9 stages"):
        partition(sim, 10)
    assert main(["eval", str(tiny), "--ranks", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ranks 10: the graph can be cut into at most 9 stages" in err[0]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_ranks_are_refused(tiny: Path, capsys, value: str) -> None:
    try:
        code = main(["eval", str(tiny), "--ranks", value])
    except SystemExit as e:  # argparse: not an integer
        code = e.code
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_ranks_with_lava_or_against_world_size_are_usage_errors(tiny: Path, capsys, monkeypatch) -> None:
    assert main(["eval", str(tiny), "--ranks", "2", "--backend", "lava"]) == 2
    assert "--backend lava runs in one process" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.world(1) == distributed.World(0, 3, True)  # torchrun's world
    with pytest.raises(UsageError, match="--ranks 2 but WORLD_SIZE is 3"):
        distributed.world(2)


def test_a_rank_alone_gives_up_after_the_timeout(tiny: Path) -> None:
    # in a process of its own: a failed init_process_group leaves state behind in torch.distributed
    script = ("import sys, datetime; from spikec import distributed; from spikec.core.errors import ResourceError\n"
              "distributed.TIMEOUT = datetime.timedelta(seconds=2)\n"
              "try:\n    distributed.run_worker(sys.argv[1], 2, 'cpu')\n"
              "except ResourceError as e:\n    print(e)\n")
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(distributed.free_port())}
    proc = subprocess.run([sys.executable, "-c", script, str(tiny)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert "the 2 ranks could not meet" in proc.stdout, proc


def test_values_cross_a_cut_with_their_class_dtype_and_flags() -> None:
    spikes = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)
    values = {
        "a": Value(spikes, True, logical=torch.float32, total=2),
        "b": Spikes(torch.ones(2, 3), True, counts=torch.arange(6.0).reshape(2, 3)),
        "c": Value(torch.zeros(0, 4, dtype=torch.float64), False, operations={"synaptic": 3.0}),
    }
    headers, tensors = encode_values(values)
    back = decode_values(json.loads(json.dumps(headers)), tensors, torch.device("cpu"))
    assert type(back["b"]) is Spikes and torch.equal(back["b"].counts, values["b"].counts)
    assert back["a"].logical is torch.float32 and back["a"].total == 2 and torch.equal(back["a"].data, spikes)
    assert back["c"].data.shape == (0, 4) and back["c"].data.dtype == torch.float64
    assert back["c"].operations is None  # the producing node's figure, counted on its own rank


def test_a_rank_that_dies_is_one_error_on_rank_0_not_a_hang(tiny: Path, sim: Simulator, monkeypatch,
                                                             one_thread) -> None:
    started = []
    start = distributed.start_workers
    monkeypatch.setattr(distributed, "start_workers", lambda *args: started.extend(start(*args)) or started)
    ids = torch.randint(0, 50257, (1, 16))
    with pytest.raises(ResourceError, match="the pipeline over 2 ranks failed"):
        with distributed.pipeline_head(sim.graph, str(tiny), 2, "cpu") as head:
            head.run(ids, 4)
            started[0].kill()
            started[0].wait()
            head.run(ids, 4)
    assert not torch.distributed.is_initialized()
