"""``python -m spikec``: the ``spikec`` command."""

import sys

from spikec.cli import main

sys.exit(main())
