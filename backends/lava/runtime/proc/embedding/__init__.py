"""The ``Embedding`` process: token (+ position) embedding of ids given at build time."""
