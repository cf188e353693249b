"""The ``FewSpike`` process: few-spike neurons, step k weighted 2^-k (binary code) or 3^-k (balanced ternary)."""
