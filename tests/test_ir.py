"""The NIR extension IR (spikec.core.ir): every node type is registered under its class name,
round-trips through a NIR file, says whether it spikes by its ``kind``, and needs no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable

import nir
import numpy as np
import pytest

from spikec.backends import nirio
from spikec.core import ir

RNG = np.random.default_rng(0)
D = 4


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _positive(*shape: int) -> np.ndarray:
    return np.abs(_f32(*shape)) + 0.1


def _ssa() -> ir.SpikecSSA:
    h, kv, d = 2, 1, 2
    return ir.SpikecSSA(num_heads=h, num_kv_heads=kv, head_dim=d, rope_theta=10000.0, q_threshold=_positive(h * d),
                        k_threshold=_positive(kv * d), v_threshold=_positive(kv * d), scale=_f32(h * d),
                        o_threshold=_positive(h * d), signed=True, tau=0.0, normalize=True,
                        decay=np.array([1.0, 0.5], np.float32), map_threshold=_positive(h), map_bias=_f32(h))


EXAMPLES: dict[type, Callable[[], ir.SpikecNode]] = {
    ir.SpikecEmbedding: lambda: ir.SpikecEmbedding(weight=_f32(10, D), position_weight=_f32(8, D)),
    ir.SpikecLayerNorm: lambda: ir.SpikecLayerNorm(weight=_f32(D), bias=_f32(D), eps=1e-5),
    ir.SpikecRMSNorm: lambda: ir.SpikecRMSNorm(weight=_f32(D), eps=1e-6),
    ir.SpikecAttention: lambda: ir.SpikecAttention(num_heads=2, num_kv_heads=1, head_dim=2, rope_theta=0.0,
                                                   scale=0.5),
    ir.SpikecActivation: lambda: ir.SpikecActivation(activation="gelu", features=D),
    ir.SpikecGatedActivation: lambda: ir.SpikecGatedActivation(activation="silu", features=D),
    ir.SpikecAdd: lambda: ir.SpikecAdd(features=D),
    ir.SpikecSignedIF: lambda: ir.SpikecSignedIF(threshold=_positive(D), max_spikes=2, signed=True,
                                                 v_init=_f32(D)),
    ir.SpikecRateReadout: lambda: ir.SpikecRateReadout(features=D, metadata={"role": "mlp_out"}),
    ir.SpikecSSA: _ssa,
    ir.SpikecSTBIF: lambda: ir.SpikecSTBIF(threshold=_positive(D), max_spikes=4, signed=False, v_init=0.5),
    ir.SpikecStreamLayerNorm: lambda: ir.SpikecStreamLayerNorm(weight=_f32(D), bias=_f32(D), eps=1e-5),
    ir.SpikecStreamRMSNorm: lambda: ir.SpikecStreamRMSNorm(weight=_f32(D), eps=1e-6),
    ir.SpikecStreamActivation: lambda: ir.SpikecStreamActivation(activation="relu", features=D),
    ir.SpikecStreamGatedActivation: lambda: ir.SpikecStreamGatedActivation(activation="gelu_tanh", features=D),
    ir.SpikecStreamAdd: lambda: ir.SpikecStreamAdd(features=D),
    ir.SpikecSpikeAttention: lambda: ir.SpikecSpikeAttention(
        num_heads=2, num_kv_heads=1, head_dim=2, rope_theta=10000.0, scale=0.5, input_scale=_positive(8),
        prob_threshold=_positive(2), prob_max_spikes=3, prob_v_init=0.5),
    ir.SpikecTokenEncoder: lambda: ir.SpikecTokenEncoder(threshold=_positive(D), max_spikes=1, signed=True,
                                                         v_init=0.5, scheme="binary", bits=8),
    ir.SpikecSpikeDecode: lambda: ir.SpikecSpikeDecode(weight=_positive(D), scheme="rate", bits=8),
    ir.SpikecFewSpike: lambda: ir.SpikecFewSpike(threshold=_positive(D), signed_digits=True),
    ir.SpikecBinaryReadout: lambda: ir.SpikecBinaryReadout(features=D),
}
"""Extension node type -> a function making one example of it."""


def test_every_extension_type_is_registered_under_its_class_name_and_has_an_example():
    assert all(name == cls.__name__ for name, cls in ir.EXTENSION_TYPES.items())
    assert set(ir.EXTENSION_TYPES.values()) == set(EXAMPLES)
    assert all(issubclass(cls, ir.SpikecNode) for cls in ir.EXTENSION_TYPES.values())


def test_every_node_class_is_importable_from_spikec_core_ir():
    for name in ir.EXTENSION_TYPES:
        assert getattr(ir, name) is ir.EXTENSION_TYPES[name]
    assert set(ir.EXTENSION_TYPES) <= set(ir.__all__)


def _fields(node: nir.NIRNode) -> dict:
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}


@pytest.mark.parametrize("name", sorted(ir.EXTENSION_TYPES))
def test_every_extension_node_round_trips_through_a_nir_file(name, tmp_path):
    node = EXAMPLES[ir.EXTENSION_TYPES[name]]()
    graph = nir.NIRGraph(nodes={"node": node}, edges=[], metadata={"timesteps": 4}, type_check=False)
    nirio.write(tmp_path / "g.nir", graph)
    back = nirio.read(tmp_path / "g.nir").nodes["node"]
    assert type(back) is type(node)
    want, got = _fields(node), _fields(back)
    assert set(want) == set(got)
    for field, value in want.items():
        if isinstance(value, dict) and field != "metadata":  # input_type / output_type
            assert set(value) == set(got[field]) and all(np.array_equal(value[k], got[field][k]) for k in value)
        elif isinstance(value, np.ndarray):
            assert isinstance(got[field], np.ndarray) and got[field].dtype == value.dtype, field
            assert np.array_equal(got[field], value), field
        else:
            assert got[field] == value and type(got[field]) is type(value), field


@pytest.mark.parametrize("name", sorted(ir.EXTENSION_TYPES))
def test_is_spiking_agrees_with_the_kind_of_each_extension_node(name):
    node = EXAMPLES[ir.EXTENSION_TYPES[name]]()
    assert node.kind in ("real", "spiking", "readout")
    assert ir.is_spiking(node) == (node.kind == "spiking")
    assert ir.is_extension(node)


def test_standard_nir_neurons_spike_and_are_no_extension():
    d = np.ones(2)
    assert ir.is_spiking(nir.IF(r=d, v_threshold=d, v_reset=0 * d))
    assert not ir.is_spiking(nir.Affine(weight=np.eye(2), bias=np.zeros(2)))
    assert not ir.is_extension(nir.IF(r=d, v_threshold=d, v_reset=0 * d))


def test_the_extension_ir_imports_no_torch():
    code = "import sys, spikec.core.ir; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
