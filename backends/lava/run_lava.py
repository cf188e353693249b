#!/usr/bin/env python3
"""Run a spikec Lava export on Intel Lava's Loihi 2 CPU simulator (``Loihi2SimCfg``).

The export writes this file as ``DIR/lava/run_lava.py`` next to its ``runtime/`` package::

    python run_lava.py --input tokens.npy --timesteps 8 --precision floating_pt --out out.npz

The code is in ``runtime/`` (``runtime/cli.py`` for the options); this entry point puts its
own folder on ``sys.path`` and runs it on the export in this folder (``--export`` to change).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from runtime.cli import main

    sys.exit(main(default_export=here))
