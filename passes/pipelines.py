"""The pass pipelines behind ``spikec compile``'s mode flags.

``--attention``, ``--token-encoding`` and ``--calibrate`` choose among the built-in
conversions; this module turns them into a list of pass names plus the pass options
they imply, so the CLI, the Python API and the benchmarks build the same pipelines.
"""

from __future__ import annotations

from typing import Any

from spikec.core.codings import CODINGS, FEW_SPIKE_CODINGS  # rate, binary, ternary; --budget's
from spikec.core.errors import UsageError

ATTENTION_MODES = ("softmax", "spike-softmax", "ssa")
"""softmax: rate-coded affines, real-valued attention core and norms (the default);
spike-softmax: every operator spike-driven or spike-equivalent (docs/spike-softmax.md);
ssa: spiking self-attention without softmax (docs/ssa.md; fine-tune it with
``spikec finetune --method ssa``)."""

TOKEN_ENCODINGS = ("none", "rate", "binary")
CALIBRATION_MODES = ("none", "coarse", "fine")

_BASE = ["fold-norm-affine", "calibrate", "burst-all"]


def build_pipeline(attention: str = "softmax", token_encoding: str = "none",
                   calibrate: str = "none", coding: str = "rate") -> tuple[list[str], dict[str, Any]]:
    """Pass names and pass options for a conversion mode.

    softmax: ``fold-norm-affine, calibrate, burst-all, [token-encode,] spike-encode,
    [fas-calibrate]``; spike-softmax: ``..., burst-all, [token-encode,] spike-softmax``;
    ssa: the softmax pipeline followed by ``ssa``. ``coding="binary"`` or ``"ternary"`` (softmax
    attention, no FAS calibration): ``fold-norm-affine, calibrate, [token-encode,] binary-encode``
    (ternary with the option ``binary_digits=ternary``). Raises ``UsageError`` for an unknown
    mode or a combination that does not exist (FAS calibration tunes SignedIF neurons,
    which spike-softmax replaces).
    """
    for value, known, flag in ((attention, ATTENTION_MODES, "--attention"),
                               (token_encoding, TOKEN_ENCODINGS, "--token-encoding"),
                               (calibrate, CALIBRATION_MODES, "--calibrate"),
                               (coding, CODINGS, "--coding")):
        if value not in known:
            raise UsageError(f"unknown {flag} {value!r}; choose one of {', '.join(known)}")
    tokens = [] if token_encoding == "none" else ["token-encode"]
    options: dict[str, Any] = {} if token_encoding == "none" else {"token_encoding": token_encoding}
    if coding in FEW_SPIKE_CODINGS:
        if attention != "softmax" or calibrate != "none":
            raise UsageError(f"--coding {coding} converts the affines of the softmax pipeline; "
                             f"--attention {attention} and --calibrate {calibrate} apply to the rate code",
                             hint="drop --attention/--calibrate, or use --coding rate")
        if coding == "ternary":
            options["binary_digits"] = "ternary"
        return ["fold-norm-affine", "calibrate", *tokens, "binary-encode"], options
    if attention == "spike-softmax":
        if calibrate != "none":
            raise UsageError("--calibrate (FAS stage 2) tunes the rate-coded SignedIF neurons; "
                             "spike-softmax has its own streaming neurons",
                             hint="drop --calibrate, or use --attention softmax")
        return [*_BASE, *tokens, "spike-softmax"], options
    names = [*_BASE, *tokens, "spike-encode"]
    if calibrate != "none":
        names.append("fas-calibrate")
        options["calibrate"] = calibrate
    if attention == "ssa":
        names.append("ssa")
    return names, options
