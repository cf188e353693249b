"""Rewrite passes over canonical spikec GraphModules (importable as ``spikec.passes``).

``PASS_MODULES`` lists the modules that define the built-in passes: each registers its
passes with ``spikec.core.passes`` through ``@register_pass`` (the mechanism plugins use
too) when it is imported here. ``OPTION_RECORDS`` names the typed options record of each pass
(``spikec.core.options``), and ``option_keys`` gives every ``--option`` key a pipeline reads.
"""

from __future__ import annotations

from spikec.core.options import option_specs

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

PASS_MODULES = (calibrate, encode, binary_encode, fold, outliers, ssa, ssa_finetune, portable_encode, qcfs_finetune,
                fas_calibrate, spike_softmax, token_encoding)
"""The modules defining the built-in passes (``spikec passes`` lists what they register)."""

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


__all__ = ["ALSO_READS", "COMMON_OPTION_KEYS", "DEFAULT_PIPELINE", "OPTION_RECORDS", "PASS_MODULES", "PRESETS",
           "UNTYPED_OPTION_KEYS", "option_keys"]
