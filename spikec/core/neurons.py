"""Neuron dynamics as pure functions of (input, state) -> (output, state).

Time is the first axis of every time series: ``[T, batch, ..., features]``.
All neurons use a unit time step (dt = 1), the convention NIR importers agree on.

Two families live here:

* ``SignedIF``: spikec's conversion neuron. An integrate-and-fire neuron with soft
  reset (reset by subtraction), membrane starting at half the threshold, signed
  spikes (SpikeZIP-TF's signed IF) and an optional burst capacity of up to
  ``max_spikes`` spikes per step (graded spikes). Driven by a constant current
  ``x`` for ``T`` steps its spike count is ``clip(floor(T*x/theta + 1/2), -B*T, B*T)``:
  a rate code with ``2*B*T + 1`` levels of step ``theta/T``.
* The standard NIR neurons (IF, LIF, LI, I) discretised with dt = 1, exactly as NIR
  defines them (reset to ``v_reset``, spike when ``v > v_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPIKE_DTYPE = torch.int8  # spike trains hold small signed integers (graded spikes)


@dataclass(frozen=True)
class SignedIFParams:
    """Parameters of a layer of ``SignedIF`` neurons.

    threshold: ``[features]`` positive thresholds, in units of the input current.
    max_spikes: spikes a neuron may emit in one step (1 = binary spikes).
    signed: whether negative spikes are allowed (else the count is clipped at 0).
    v_init: initial membrane potential as a fraction of the threshold: one float for
    the layer, or a float32 tensor ``[features]`` (one per neuron, set by FAS calibration).
    """

    threshold: torch.Tensor
    max_spikes: int = 1
    signed: bool = True
    v_init: float | torch.Tensor = 0.5


def signed_if_step(
    current: torch.Tensor, v: torch.Tensor, max_spikes: int, signed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``SignedIF`` in threshold units.

    current, v: ``[..., features]`` input current and membrane, both divided by the
    threshold. Returns (spikes, new membrane); spikes are integers in
    ``[-max_spikes, max_spikes]`` (``[0, max_spikes]`` when unsigned).
    """
    v = v + current
    low = -max_spikes if signed else 0
    spikes = torch.clamp(torch.floor(v), low, max_spikes)
    return spikes, v - spikes


def initial_membrane(current: torch.Tensor, v_init: float | torch.Tensor) -> torch.Tensor:
    """The membrane at t = 0, in threshold units, shaped like ``current`` ``[..., features]``
    (float32): ``v_init`` everywhere, or per neuron when it is a ``[features]`` tensor."""
    if isinstance(v_init, torch.Tensor):
        return v_init.to(device=current.device, dtype=torch.float32).expand_as(current).clone()
    return torch.full_like(current, v_init)


def signed_if_encode(x: torch.Tensor, params: SignedIFParams, timesteps: int) -> torch.Tensor:
    """Drive ``SignedIF`` neurons with the constant current ``x`` for ``timesteps`` steps.

    x: ``[..., features]`` real-valued current (constant over time).
    Returns the spike train ``[T, ..., features]`` as ``SPIKE_DTYPE``.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    current = x.float() / params.threshold.float()
    v = initial_membrane(current, params.v_init)
    out = torch.empty((timesteps, *current.shape), dtype=SPIKE_DTYPE, device=current.device)
    for t in range(timesteps):
        spikes, v = signed_if_step(current, v, params.max_spikes, params.signed)
        out[t] = spikes.to(SPIKE_DTYPE)
    return out


def signed_if_rate(x: torch.Tensor, params: SignedIFParams, timesteps: int) -> torch.Tensor:
    """Closed form of the rate a constant current produces: the quantizer the
    ``SignedIF`` implements, in the units of ``x`` (used for QCFS-style training and
    calibration, not for simulation)."""
    theta = params.threshold.float()
    low = -params.max_spikes * timesteps if params.signed else 0
    count = torch.clamp(
        torch.floor(timesteps * x.float() / theta + params.v_init),
        low,
        params.max_spikes * timesteps,
    )
    return count * theta / timesteps


# ---------------------------------------------------------------------------
# Standard NIR neurons, dt = 1 (forward Euler), as the NIR definitions state.
# ---------------------------------------------------------------------------


def nir_if_step(
    current: torch.Tensor, v: torch.Tensor, r: torch.Tensor, v_threshold: torch.Tensor,
    v_reset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NIR IF: ``v += r * I``; spike where ``v > v_threshold``; then ``v = v_reset``."""
    v = v + r * current
    spikes = (v > v_threshold).to(current.dtype)
    v = torch.where(spikes.bool(), v_reset.expand_as(v), v)
    return spikes, v


def nir_lif_step(
    current: torch.Tensor, v: torch.Tensor, tau: torch.Tensor, r: torch.Tensor,
    v_leak: torch.Tensor, v_threshold: torch.Tensor, v_reset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NIR LIF with dt = 1: ``v += (v_leak - v + r * I) / tau``; spike where
    ``v > v_threshold``; then ``v = v_reset``."""
    v = v + (v_leak - v + r * current) / tau
    spikes = (v > v_threshold).to(current.dtype)
    v = torch.where(spikes.bool(), v_reset.expand_as(v), v)
    return spikes, v


def nir_li_step(
    current: torch.Tensor, v: torch.Tensor, tau: torch.Tensor, r: torch.Tensor,
    v_leak: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NIR LI with dt = 1: ``v += (v_leak - v + r * I) / tau``; output ``v``."""
    v = v + (v_leak - v + r * current) / tau
    return v, v


def nir_i_step(
    current: torch.Tensor, v: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """NIR I (integrator) with dt = 1: ``v += r * I``; output ``v``."""
    v = v + r * current
    return v, v


def nir_if_encode(
    current: torch.Tensor, timesteps: int, r: float = 1.0, v_threshold: float = 1.0, v_reset: float = 0.0
) -> torch.Tensor:
    """Drive NIR ``IF`` neurons (``nir_if_step``) with the constant ``current`` for
    ``timesteps`` steps, membrane from 0. ``current``: ``[..., features]``; the parameters
    are one value for every neuron. Returns the 0/1 spikes ``[T, ..., features]`` as
    ``SPIKE_DTYPE``: a rate code whose reset to ``v_reset`` discards what the membrane held
    above the threshold (the price of standard NIR's IF, see docs/interop.md)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    current = current.float()
    params = [torch.tensor(float(p), dtype=torch.float32, device=current.device) for p in (r, v_threshold, v_reset)]
    v = torch.zeros_like(current)
    out = torch.empty((timesteps, *current.shape), dtype=SPIKE_DTYPE, device=current.device)
    for t in range(timesteps):
        spikes, v = nir_if_step(current, v, *params)
        out[t] = spikes.to(SPIKE_DTYPE)
    return out
