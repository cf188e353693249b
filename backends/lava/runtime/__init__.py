"""The runtime of a spikec Lava export: runs it on Intel Lava's Loihi 2 CPU simulator.

The export (``spikec.backends.lava.export``) copies this folder whole into ``DIR/lava/runtime/``
next to the entry point ``run_lava.py``::

    python run_lava.py --input tokens.npy --timesteps 8 --precision floating_pt --out out.npz

It imports only lava-nc, nir, numpy, the standard library and itself (Python 3.10, numpy < 2),
so the folder runs on any host with ``pip install lava-nc==0.10.0 nir numpy<2``.

* ``network``, ``schedule``, ``fixed_point``, ``numpy_ops``: no Lava import; they import each
  other relatively and are shared with the export side (``spikec.backends.lava.runtime``).
* ``proc/<name>/process.py`` + ``models.py``: the Lava processes and their tagged models;
  ``run``: building and running the segments; ``cli``: the command line. These import Lava
  and ``runtime`` absolutely (Lava's model discovery runs each process module as a file),
  so they run with the folder holding ``runtime`` on ``sys.path``, as ``run_lava.py`` sets it.

Mapping (one Lava process per graph node, vectorised over batch x positions; every port
carries a ``[features, batch*positions]`` array):

* ``SignedIF``    -> custom process ``SignedIF`` (signed, graded, soft-reset neurons),
                     driven by its real input as a constant current (a bias) for T steps.
* ``SSA``         -> custom process ``SpikingSelfAttention``: spiking self-attention on the
                     real q|k|v, scheduled like a SignedIF layer (spikes for T steps).
* ``Affine`` fed by neurons -> ``PositionalDense``, a subclass of Lava's ``Dense`` with
                     graded spikes (num_message_bits = 8) and a ``[in, N]`` input port;
                     its model runs Lava's Dense arithmetic (float, or Loihi's 8-bit
                     bit-accurate weights) and skips steps without spikes.
* ``RateReadout`` -> custom process ``RateReadout``: sums the Dense output of the T steps
                     of its window, adds the bias, divides by T: the real value.
* ``FewSpike``    -> custom process ``FewSpike``: few-spike neurons (binary digits, or
                     balanced ternary with ``radix: 3``), scheduled like a SignedIF layer.
* ``BinaryReadout`` -> custom process ``BinaryReadout``: Horner's rule (``acc = r acc + a``, r
                     the radix) per group of 8 steps, the groups scaled and added, the bias.
* real-valued ops (embedding, norms, attention, activations, residual add, a real Affine)
                  -> custom processes computing once their inputs are complete.

Schedule (the delay alignment, see docs/lava.md): a real value becomes valid at a
step ``ready`` and is then held on the port. A SignedIF layer whose current is ready at
step ``w`` spikes at steps ``w .. w+T-1`` (reference step ``t`` = Lava step ``w+t``).
Lava's Dense delivers ``W s(g)`` at step ``g+1``, so the readout sums steps ``w+1 .. w+T``
and its value is ready at ``w+T``, exactly when the next layer's window starts: the
one-step Dense delay is absorbed and each neuron layer costs T steps.

Numerics: the real-valued ops reproduce torch's float32 CPU kernels where that is possible in
numpy (LayerNorm/RMSNorm bit for bit, ``--torch-vec-width``), so that floating_pt spikes equal
spikec's reference simulator; see docs/lava.md for what remains (MKL readouts, attention).

Segments: Lava's simulator runs every process as an OS process and synchronises all of
them at every step, so a 30-block model in one network costs ~0.2-0.5 s per step. The
runtime therefore splits the stages into segments (``--stages-per-run``, default 4, about
one transformer block) and runs each segment as its own Lava network; the real values
crossing a cut are read back on the host and fed to the next segment by ``HostValue``
processes. ``--stages-per-run 0`` runs the whole graph as one network.
"""
