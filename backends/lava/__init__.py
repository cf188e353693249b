"""Intel Lava target: export spikec's spiking graphs to Lava and run them on Lava's Loihi 2
simulator, spike for spike against the reference simulator (docs/lava.md).

* ``export``  NIR graph -> ``DIR/lava/`` (network.json, weights.npz, quantization.json, run_lava.py, runtime/)
* ``runtime`` the standalone runtime copied into the export (lava-nc + nir + numpy only, Python 3.10);
              ``run_lava.py`` its entry point
* ``env``     finding / creating the Python 3.10 environment that holds lava-nc
* ``compare`` running an export in that environment and comparing it with the reference simulator
"""
