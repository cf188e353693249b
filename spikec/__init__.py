"""spikec: compile transformer language models into spiking neural networks.

Public API for pass authors::

    import spikec

    @spikec.register_pass("my-pass")
    def my_pass(gm: torch.fx.GraphModule, ctx: spikec.PassContext) -> torch.fx.GraphModule | None: ...
"""

from typing import Any

__all__ = ["PassContext", "register_pass", "registered_passes"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import spikec` stays light, so the CLI starts fast and handles Ctrl-C from its first moment.
    if name in __all__:
        from spikec.core import passes

        return getattr(passes, name)
    raise AttributeError(f"module 'spikec' has no attribute {name!r}")
