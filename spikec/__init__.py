"""spikec: compile transformer language models into spiking neural networks.

Public API for pass authors::

    import spikec

    @spikec.register_pass("my-pass")
    def my_pass(gm: torch.fx.GraphModule, ctx: spikec.PassContext) -> torch.fx.GraphModule | None: ...
"""

from spikec.core.passes import PassContext, register_pass, registered_passes

__all__ = ["PassContext", "register_pass", "registered_passes"]
__version__ = "0.1.0"
