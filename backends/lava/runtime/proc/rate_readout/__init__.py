"""The ``RateReadout`` process: the real value of a Dense's output over a window."""
