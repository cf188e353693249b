"""Rewrite passes over canonical spikec GraphModules (importable as ``spikec.passes``).

``BUILTIN_PASSES`` is the table of the built-in passes, assembled here from the functions of
the pass modules (they register nothing themselves). User passes (plugins, notebooks) register
with ``@spikec.register_pass`` into ``spikec.core.passes``; ``all_passes`` merges the two, and
``get_pass``, ``registered_passes`` and ``run_passes`` look passes up in that merge.
``OPTION_RECORDS`` names the typed options record of each pass (``spikec.core.options``), and
``option_keys`` gives every ``--option`` key a pipeline reads.
"""

from __future__ import annotations

from typing import Callable

import torch

from spikec.core import passes as core_passes
from spikec.core.errors import InputError
from spikec.core.options import option_specs
from spikec.core.passes import PassContext, PassInfo, PassRecord, pass_info

from . import (
    binary_encode,  # few-spike coding (docs/few-spike.md)
    calibrate,
    encode,
    fas_calibrate,  # FAS stage 2 (docs/fas.md)
    fold,
    outliers,
    portable_encode,  # standard NIR IF neurons (docs/interop.md)
    qcfs_finetune,  # FAS stage 1 (docs/fas.md)
    spike_softmax,  # docs/spike-softmax.md
    ssa,  # spiking self-attention (docs/ssa.md)
    ssa_finetune,
    token_encoding,
)

BUILTIN_PASSES: dict[str, PassInfo] = {
    info.name: info for info in (
        pass_info("fold-norm-affine", fold.fold_norm_affine, "builtin"),
        pass_info("calibrate", calibrate.calibrate, "builtin"),
        pass_info("burst-mlp-out", outliers.burst_mlp_out, "builtin"),
        pass_info("wide-range-mlp-out", outliers.wide_range_mlp_out, "builtin"),
        pass_info("burst-all", outliers.burst_all, "builtin"),
        pass_info("spike-encode", encode.spike_encode, "builtin"),
        pass_info("binary-encode", binary_encode.binary_encode, "builtin"),
        pass_info("portable-encode", portable_encode.portable_encode, "builtin"),
        pass_info("token-encode", token_encoding.token_encode, "builtin"),
        pass_info("spike-softmax", spike_softmax.spike_softmax, "builtin"),
        pass_info("ssa", ssa.ssa_pass, "builtin"),
        pass_info("ssa-finetune", ssa_finetune.ssa_finetune, "builtin"),
        pass_info("qcfs-finetune", qcfs_finetune.qcfs_finetune, "builtin"),
        pass_info("fas-calibrate", fas_calibrate.fas_calibrate, "builtin"),
    )
}
"""Pass name -> the built-in pass (``spikec passes`` lists these and the user passes)."""

OPTION_RECORDS: dict[str, type] = {
    "calibrate": calibrate.CalibrateOptions,
    "spike-encode": encode.EncodeOptions,
    "binary-encode": binary_encode.BinaryEncodeOptions,
    "portable-encode": portable_encode.PortableOptions,
    "qcfs-finetune": qcfs_finetune.QCFSOptions,
    "fas-calibrate": fas_calibrate.FASOptions,
    "ssa": ssa.SSAOptions,
    "ssa-finetune": ssa_finetune.SSAFinetuneOptions,
}
"""Pass name -> the options record it reads (``spikec.core.options.from_options``)."""

ALSO_READS: dict[str, tuple[type, ...]] = {
    "qcfs-finetune": (encode.EncodeOptions,),  # neuron_config: the thresholds spike-encode will use
    "spike-softmax": (encode.EncodeOptions, calibrate.CalibrateOptions),
    "token-encode": (encode.EncodeOptions, calibrate.CalibrateOptions),
    "portable-encode": (calibrate.CalibrateOptions,),
    "ssa": (calibrate.CalibrateOptions,),
    "ssa-finetune": (calibrate.CalibrateOptions,),
}
"""Pass name -> further records whose options it reads (through another pass's helpers)."""

UNTYPED_OPTION_KEYS: dict[str, frozenset[str]] = {
    "burst-all": frozenset({"burst_spikes", "burst_range_scale"}),
    "burst-mlp-out": frozenset({"burst_spikes", "burst_range_scale"}),
    "wide-range-mlp-out": frozenset({"wide_range_scale"}),
    "spike-softmax": frozenset({"qkv_range", "qkv_range_scale", "qkv_max_spikes", "burst_range_scale",
                                "burst_spikes", "prob_max_spikes"}),
    "token-encode": frozenset({"token_encoding", "token_bits", "token_range", "token_range_scale",
                               "token_max_spikes", "burst_spikes"}),
}
"""Pass name -> option keys it reads without a record (``ctx.option``)."""

COMMON_OPTION_KEYS = frozenset({"timesteps"})
"""Keys every pipeline takes: ``timesteps`` (the compile's T, ``PassContext.timesteps``)."""

DEFAULT_PIPELINE: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]
"""The passes ``spikec compile`` runs by default, in order."""

PRESETS: dict[str, dict[str, float | int]] = {
    "balanced": {},
    "accurate": {"burst_range_scale": 0.5, "burst_spikes": 16},
}
"""Named pass-option sets (``spikec compile --preset``). ``accurate`` halves the burst neurons'
thresholds (twice the resolution at the same T) and doubles their burst capacity (the same
range), for about twice the spikes. Measured on SmolLM2-135M, held-out text, ppl ratio
balanced/accurate: T=8 2.12/1.18, T=16 1.17/1.04, T=32 1.06/1.007, T=64 1.017/1.002
(benchmarks/accuracy_curve.py)."""


def option_keys(pass_names: list[str]) -> set[str]:
    """Every ``--option`` key the passes ``pass_names`` read: their records' keys, the keys
    they read without a record, and ``COMMON_OPTION_KEYS``. Passes not built in (plugins)
    add nothing."""
    keys = set(COMMON_OPTION_KEYS)
    for name in pass_names:
        records = ((OPTION_RECORDS[name],) if name in OPTION_RECORDS else ()) + ALSO_READS.get(name, ())
        for record in records:
            keys |= set(option_specs(record))
        keys |= UNTYPED_OPTION_KEYS.get(name, frozenset())
    return keys


def all_passes() -> dict[str, PassInfo]:
    """Every pass by name: ``BUILTIN_PASSES`` and the user passes of ``@spikec.register_pass``.
    A user pass may not take a built-in pass's name (plugins are refused when they load; a pass
    registered in Python is refused here)."""
    user = core_passes.user_passes()
    clashes = sorted(user.keys() & BUILTIN_PASSES.keys())
    if clashes:
        name = clashes[0]
        raise InputError(f"the user pass {name!r} ({user[name].source}) has the name of a built-in pass",
                         hint="register it under another name")
    return {**BUILTIN_PASSES, **user}


def get_pass(name: str) -> PassInfo:
    """The pass ``name`` (built in or user); raises ``UnknownPassError`` listing known names."""
    return core_passes.lookup_pass(all_passes(), name)


def registered_passes() -> list[PassInfo]:
    """Every pass, built in or user, sorted by name."""
    registry = all_passes()
    return [registry[k] for k in sorted(registry)]


def run_passes(
    gm: torch.fx.GraphModule,
    names: list[str],
    ctx: PassContext,
    on_pass: Callable[[str], None] | None = None,
) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """``spikec.core.passes.run_passes`` over ``all_passes()``: run the passes ``names`` in
    order on ``gm``; returns the final module and one ``PassRecord`` per pass."""
    return core_passes.run_passes(gm, names, ctx, all_passes(), on_pass)


__all__ = ["ALSO_READS", "BUILTIN_PASSES", "COMMON_OPTION_KEYS", "DEFAULT_PIPELINE", "OPTION_RECORDS", "PRESETS",
           "UNTYPED_OPTION_KEYS", "all_passes", "get_pass", "option_keys", "registered_passes", "run_passes"]
