"""spikec: compile transformer language models into spiking neural networks.

Python API (docs/api.md)::

    import spikec

    snn = spikec.compile("gpt2", timesteps=16)   # or a directory, or a model object
    snn.evaluate(tokens=256)                      # ANN vs SNN perplexity, cosine, top-1
    snn.generate("The GNU General Public License is", max_new_tokens=8)
    snn.save("build/gpt2")                        # spikec.load("build/gpt2") reads it back

For pass authors::

    @spikec.register_pass("my-pass")
    def my_pass(gm: torch.fx.GraphModule, ctx: spikec.PassContext) -> torch.fx.GraphModule | None: ...
"""

from typing import Any

__all__ = ["PassContext", "SpikingModel", "compile", "load", "register_pass", "registered_passes"]
__version__ = "0.1.0"

_HOMES = {
    "PassContext": "spikec.core.passes",
    "register_pass": "spikec.core.passes",
    "registered_passes": "spikec.passes",
    "compile": "spikec.api",
    "load": "spikec.api",
    "SpikingModel": "spikec.spiking_model",
}
"""Where each public name is defined: imported on first use."""


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import spikec` stays light, so the CLI starts fast and handles Ctrl-C from its first moment.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'spikec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
