"""The reference simulator: runs a ``nir.NIRGraph`` (standard nodes and spikec's
extension nodes) with torch, one node at a time, on CPU or a CUDA device.

Semantics
---------
* Order: nodes run in topological order of the edges (``graphlib``). A node's input
  is the sum of its incoming edges (NIR fan-in), added left to right in the order the
  edges appear in ``graph.edges`` (so a ``SpikecAdd`` with edges ``a`` then ``b``
  computes ``a + b``, as the torch.fx module does). Dots in node names are ordinary
  characters; nested ``NIRGraph`` nodes are rejected.
* Values: an edge carries either a *real* tensor without a time axis (e.g.
  ``[batch, positions, features]``; token ids ``[batch, positions]`` int64 pass
  unchanged into ``SpikecEmbedding``) or a *time series* ``[T, ...]``. Input nodes
  take the given tensors as real values, or as time series when
  ``inputs_are_series=True``. Adding a real value and a time series broadcasts the
  real value over the T steps.
* Stateless standard nodes (Affine, Linear, Scale, Flatten, Threshold) apply to what
  they get; on a time series Affine/Linear do one matmul over all steps. Flatten's
  ``start_dim``/``end_dim`` count in the node's ``input_type`` (without batch and
  time axes). Threshold turns a real input into a constant spike train.
* Neurons (IF, LIF, LI, I, CubaLIF, CubaLI, SpikecSignedIF) run T steps with dt = 1 as
  NIR defines them (``spikec.core.neurons``); a real input is a constant current for
  all T steps. Membranes (and synaptic currents) start at 0, not at ``v_reset``;
  ``SpikecSignedIF`` starts at ``v_init * threshold``. CubaLIF/CubaLI update the
  synaptic current first, ``I += (-I + w_in * S) / tau_syn``, then the membrane with
  the new current. Their output is a time series ``[T, ...]`` (spikes 0/1 in the
  membrane's dtype; int8 for SpikecSignedIF).
* Extension nodes call the very functions of ``spikec.core.ops`` the converted fx
  module calls, so results agree bit for bit. An ``Affine`` (or ``Linear``) whose input
  is a time series and whose only consumer is a ``SpikecRateReadout`` fed by nothing
  else is computed as ``ops.rate_readout_affine(spikes, W, b)`` (mean over T of the
  affine) and the readout passes the real result on; one consumed by a
  ``SpikecBinaryReadout`` likewise as ``ops.binary_readout_affine`` (the few-spike code's
  Horner sum, ``W sum_k 2^-k s_k + b``). A readout of a real value is that value. Real-valued extension ops given a time series apply at every
  step independently.
* Memory: a node's value is freed as soon as all its consumers have run; only Output
  values and, with ``record=True``, the spike trains of spiking nodes are kept (only their
  first ``record_positions`` positions when given, as the report's raster needs).
* Deterministic: no randomness anywhere.

Layout
------
``values`` (what flows on edges, the kernels' shared context), one module of kernels per
node family (``standard`` NIR nodes, ``rate``-coded extension nodes, ``ssa``, ``streaming``,
``few_spike``), ``pipeline`` (the graph cut into stages over ``torch.distributed`` ranks),
``engine`` (the kernel table and the graph execution) and the compiled loops
(``native_loops``, built from ``native_source`` by ``native_build``).

Execution modes (``mode``)
--------------------------
``"reference"`` is the plain-torch definition: every neuron steps through T torch
iterations and every spike train is materialised. ``"fast"`` (the default) computes
the same spikes, bit for bit, and the same values (see docs/simulator.md):

* A ``SpikecSignedIF`` driven by a real current whose every consumer is a fused
  Affine -> RateReadout pair emits only its spike *counts* (sum over the T steps): the
  pair needs no more (``rate_readout_affine`` is ``W (sum_t s_t / T) + b``), so no
  ``[T, ...]`` tensor exists. The neuron loop runs fused over T in a compiled kernel
  (``native_loops``; torch in-place ops on CUDA or without a C compiler).
* A ``SpikecFewSpike`` layer (binary digits) feeding only fused Affine -> BinaryReadout pairs
  emits only its weighted counts ``sum_k 2^-k s_k`` and its spike total, from the closed form
  ``few_spike.binary_code`` (the bits of the rounded value and their popcount).
* NIR ``IF`` runs in a fused compiled kernel and its 0/1 spikes are kept as int8 (4x
  smaller than float32); they become the membrane's dtype wherever a value is read out.
* An Affine/Linear on a spike train (int8, or a float time series whose values are all
  small integers, e.g. spikes given as the graph's input) multiplies it as events (each
  spike adds a row of ``W.T``) when its spike density is below
  ``native_loops.SPARSE_CROSSOVER`` and the event sum provably equals the dense product
  bit for bit (every partial sum exact in float32: ``native_loops.exact_event_limit``,
  e.g. weights on a dyadic grid); densely otherwise (``sparse="auto"``; ``"never"`` /
  ``"always"`` force the density choice, still exact). ``sparse="inexact"`` (opt-in) uses
  events below the crossover density on any float32 weights: their sums run in another
  order than a dense GEMM, equal up to float rounding only, which can flip a spike.
* Spike counts for ``spike_counts`` come from the kernels (no extra pass); a neuron whose
  input no one else needs writes its counts over that input (no extra allocation).
"""

from .engine import MODES, SPARSE_POLICIES, SimResult, Simulator, resolve_device, simulate
from .sequences import SequenceRuns, evaluation_simulator, run_sequences

__all__ = ["MODES", "SPARSE_POLICIES", "SequenceRuns", "SimResult", "Simulator", "evaluation_simulator",
           "resolve_device", "run_sequences", "simulate"]
