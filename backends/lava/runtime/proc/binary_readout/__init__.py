"""The ``BinaryReadout`` process: the real value of a Dense's few-spike output over a window (Horner, radix 2 or 3)."""
