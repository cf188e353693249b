"""The ``RealOp`` process: a real-valued operator (norm, attention, activation, add, affine)."""
