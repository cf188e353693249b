"""The real-valued operator processes: ``RealOp`` and its kinds ``Attention``, ``Norm``, ``Add``."""
