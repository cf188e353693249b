"""spikec's own progress display (tqdm): a bar on a terminal, plain lines otherwise, so that a
log file or a pipe still shows how far a long step has come."""

from __future__ import annotations

import math
import sys
from typing import Iterator

from tqdm import tqdm


def progress_steps(total: int, desc: str, enabled: bool = True) -> Iterator[int]:
    """``range(total)``, shown on stderr while it runs: a tqdm bar when stderr is a terminal,
    else a line ``desc: i/total`` about every tenth of the way (every step up to 20 steps)."""
    if not enabled:
        yield from range(total)
        return
    if sys.stderr.isatty():
        yield from tqdm(range(total), desc=desc, leave=False, file=sys.stderr)
        return
    every = 1 if total <= 20 else math.ceil(total / 10)
    for i in range(total):
        yield i
        if (i + 1) % every == 0 or i + 1 == total:
            print(f"{desc}: {i + 1}/{total}", file=sys.stderr, flush=True)
