"""A user-written pass, usable two ways:

1. as a plugin:  spikec compile gpt2 --random-weights --config n_layer=2,n_embd=128,n_head=4 \\
                     --plugin examples/custom_pass.py --passes fold-norm-affine,calibrate,finer-lm-head,spike-encode
2. as a script:  python examples/custom_pass.py   (compiles a tiny GPT-2 with spikec.compile and prints what the
   passes recorded); examples/custom_pass.ipynb is the same as a notebook

``finer-lm-head`` gives the LM head's input neurons burst capacity so they represent
rare large activations without clipping; ``spiking-census`` (run after conversion)
records how many spiking neurons the network has.
"""

from __future__ import annotations

import tempfile

import torch

import spikec
from spikec.core import ops


@spikec.register_pass("finer-lm-head")
def finer_lm_head(gm: torch.fx.GraphModule, ctx: spikec.PassContext) -> None:
    """Give the LM head's input neurons 4 spikes per step (run before spike-encode).

    Matches: the affine node whose role is ``lm_head``. Guarantees: only its neuron
    configuration changes; the graph's structure is untouched."""
    for node in gm.graph.nodes:
        if node.meta.get("role") == "lm_head":
            node.meta["spikec_neuron"] = {**node.meta.get("spikec_neuron", {}), "max_spikes": 4}
            ctx.record("lm_head", node.meta["spikec_name"])


@spikec.register_pass("spiking-census")
def spiking_census(gm: torch.fx.GraphModule, ctx: spikec.PassContext) -> None:
    """Count neuron layers and neurons (run after spike-encode); changes nothing."""
    layers = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ops.signed_if]
    thresholds = [next(a for a in n.all_input_nodes if a.op == "get_attr") for n in layers]
    neurons = sum(int(getattr(gm, t.target).numel()) for t in thresholds)
    ctx.record("neuron_layers", len(layers))
    ctx.record("neurons_per_position", neurons)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        snn = spikec.compile(
            "gpt2", random_weights=True, config={"n_layer": 2, "n_embd": 128, "n_head": 4},
            output=f"{tmp}/tiny", timesteps=8, calib_samples=4, seq_len=32,
            passes=["fold-norm-affine", "calibrate", "finer-lm-head", "spike-encode", "spiking-census"],
        )
        report = snn.compile_report
    for record in report["passes"]:
        print(f"{record['name']:<18} {record['seconds']:.3f} s  {record['stats']}")
