"""The ``SpikingSelfAttention`` process: spiking self-attention on real q|k|v."""
