"""The ``FewSpike`` process: few-spike (binary code) neurons, step k weighted 2^-k."""
