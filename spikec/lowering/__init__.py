"""Builders that turn the call_function nodes of a canonical fx graph into NIR nodes.

Each module exports ``BUILDERS``: fx operator -> ``builder(arguments by name, fx node)`` returning
the operator's NIR node; ``canonical`` for ``spikec.core.ops``, ``ssa`` for spiking
self-attention, ``streaming`` for the spike-softmax and token-encoding operators.
``spikec.lower`` merges them into its ``LOWERINGS``. ``fields`` holds what they share.
"""
