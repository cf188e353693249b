"""Tiny canonical graphs built by hand, for tests that must not depend on the frontend.

``gpt2_like`` and ``llama_like`` return ``torch.fx.GraphModule``s in the canonical
form of the team brief: one placeholder ``input_ids``, every call one of
``spikec.core.ops``, tensors behind ``get_attr`` nodes, and the meta keys
``spikec_name``, ``role`` and ``module_path`` on every call node. Weights are random
but seeded, with non-trivial norm weights and biases so that folding them matters.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx, nn

from spikec.core import ops


class GraphBuilder:
    """Builds a canonical GraphModule node by node."""

    def __init__(self, seed: int = 0):
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.gen = torch.Generator().manual_seed(seed)

    def input(self) -> fx.Node:
        return self.graph.placeholder("input_ids")

    def param(self, name: str, tensor: torch.Tensor) -> fx.Node:
        """A get_attr node for a new attribute ``name`` holding ``tensor``."""
        attr = name.replace(".", "_")
        self.root.register_buffer(attr, tensor)
        return self.graph.get_attr(attr)

    def randn(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * std + mean

    def call(self, fn: Callable, args: tuple, kwargs: dict[str, Any] | None = None, *,
             name: str, role: str, module_path: str) -> fx.Node:
        node = self.graph.call_function(fn, args, kwargs or {})
        node.meta.update({"spikec_name": name, "role": role, "module_path": module_path})
        return node

    def linear(self, x: fx.Node, n_in: int, n_out: int, *, name: str, role: str, module_path: str,
               bias: bool = True, weight: fx.Node | None = None) -> fx.Node:
        w = weight if weight is not None else self.param(f"{name}.weight", self.randn(n_out, n_in, std=n_in**-0.5))
        b = self.param(f"{name}.bias", self.randn(n_out, std=0.1)) if bias else None
        return self.call(ops.affine, (x, w, b), name=name, role=role, module_path=module_path)

    def layer_norm(self, x: fx.Node, d: int, *, name: str, module_path: str) -> fx.Node:
        w = self.param(f"{name}.weight", self.randn(d, std=0.2, mean=1.0))
        b = self.param(f"{name}.bias", self.randn(d, std=0.2))
        return self.call(ops.layer_norm, (x, w, b, 1e-5), name=name, role="norm", module_path=module_path)

    def rms_norm(self, x: fx.Node, d: int, *, name: str, module_path: str) -> fx.Node:
        w = self.param(f"{name}.weight", self.randn(d, std=0.2, mean=1.0))
        return self.call(ops.rms_norm, (x, w, 1e-6), name=name, role="norm", module_path=module_path)

    def build(self, out: fx.Node) -> fx.GraphModule:
        self.graph.output(out)
        self.graph.lint()
        return fx.GraphModule(self.root, self.graph)


def gpt2_like(vocab: int = 61, d: int = 32, n_head: int = 4, n_layer: int = 2, n_positions: int = 32,
              activation: str = "gelu_tanh", seed: int = 0) -> fx.GraphModule:
    """GPT-2 shaped: learned positions, LayerNorm, fused c_attn, MLP 4d with ``activation``,
    final LayerNorm and an lm_head tied to the token embedding (the same attribute)."""
    g = GraphBuilder(seed)
    ids = g.input()
    wte = g.param("wte.weight", g.randn(vocab, d))
    wpe = g.param("wpe.weight", g.randn(n_positions, d, std=0.3))
    x = g.call(ops.embedding, (ids, wte, wpe), name="embed", role="embedding", module_path="transformer.wte")
    hd = d // n_head
    for i in range(n_layer):
        p, m = f"h.{i}", f"transformer.h.{i}"
        h = g.layer_norm(x, d, name=f"{p}.ln_1", module_path=f"{m}.ln_1")
        qkv = g.linear(h, d, 3 * d, name=f"{p}.attn.qkv", role="qkv", module_path=f"{m}.attn.c_attn")
        a = g.call(ops.attention, (qkv, n_head, n_head, hd, 0.0), name=f"{p}.attn.core", role="attention",
                   module_path=f"{m}.attn")
        o = g.linear(a, d, d, name=f"{p}.attn.out", role="attn_out", module_path=f"{m}.attn.c_proj")
        x = g.call(ops.add, (x, o), name=f"{p}.add_attn", role="residual", module_path=m)
        h = g.layer_norm(x, d, name=f"{p}.ln_2", module_path=f"{m}.ln_2")
        u = g.linear(h, d, 4 * d, name=f"{p}.mlp.in", role="mlp_in", module_path=f"{m}.mlp.c_fc")
        u = g.call(ops.activation, (u, activation), name=f"{p}.mlp.act", role="activation",
                   module_path=f"{m}.mlp.act")
        u = g.linear(u, 4 * d, d, name=f"{p}.mlp.out", role="mlp_out", module_path=f"{m}.mlp.c_proj")
        x = g.call(ops.add, (x, u), name=f"{p}.add_mlp", role="residual", module_path=m)
    x = g.layer_norm(x, d, name="ln_f", module_path="transformer.ln_f")
    tied = g.graph.get_attr(wte.target)
    logits = g.linear(x, d, vocab, name="lm_head", role="lm_head", module_path="lm_head", bias=False,
                      weight=tied)
    return g.build(logits)


def llama_like(vocab: int = 61, d: int = 32, n_head: int = 4, n_kv_head: int = 2, n_layer: int = 2,
               ffn: int = 64, rope_theta: float = 10000.0, seed: int = 0) -> fx.GraphModule:
    """Llama shaped: RMSNorm, fused q|k|v with grouped-query attention and rotary
    positions, fused gate|up into ``gated_activation(silu)``, no biases, untied lm_head."""
    g = GraphBuilder(seed)
    ids = g.input()
    emb = g.param("embed_tokens.weight", g.randn(vocab, d))
    x = g.call(ops.embedding, (ids, emb, None), name="embed", role="embedding", module_path="model.embed_tokens")
    hd = d // n_head
    for i in range(n_layer):
        p, m = f"h.{i}", f"model.layers.{i}"
        h = g.rms_norm(x, d, name=f"{p}.ln_1", module_path=f"{m}.input_layernorm")
        qkv = g.linear(h, d, (n_head + 2 * n_kv_head) * hd, name=f"{p}.attn.qkv", role="qkv",
                       module_path=f"{m}.self_attn", bias=False)
        a = g.call(ops.attention, (qkv, n_head, n_kv_head, hd, rope_theta), name=f"{p}.attn.core",
                   role="attention", module_path=f"{m}.self_attn")
        o = g.linear(a, n_head * hd, d, name=f"{p}.attn.out", role="attn_out", module_path=f"{m}.self_attn.o_proj",
                     bias=False)
        x = g.call(ops.add, (x, o), name=f"{p}.add_attn", role="residual", module_path=m)
        h = g.rms_norm(x, d, name=f"{p}.ln_2", module_path=f"{m}.post_attention_layernorm")
        u = g.linear(h, d, 2 * ffn, name=f"{p}.mlp.in", role="mlp_in", module_path=f"{m}.mlp", bias=False)
        u = g.call(ops.gated_activation, (u, "silu"), name=f"{p}.mlp.act", role="activation",
                   module_path=f"{m}.mlp.act_fn")
        u = g.linear(u, ffn, d, name=f"{p}.mlp.out", role="mlp_out", module_path=f"{m}.mlp.down_proj", bias=False)
        x = g.call(ops.add, (x, u), name=f"{p}.add_mlp", role="residual", module_path=m)
    x = g.rms_norm(x, d, name="ln_f", module_path="model.norm")
    logits = g.linear(x, d, vocab, name="lm_head", role="lm_head", module_path="lm_head", bias=False)
    return g.build(logits)


FAMILIES: dict[str, Callable[..., fx.GraphModule]] = {"gpt2": gpt2_like, "llama": llama_like}


def token_ids(vocab: int = 61, samples: int = 8, positions: int = 16, seed: int = 1) -> torch.Tensor:
    """Random token ids ``[samples, positions]`` (int64), seeded."""
    return torch.randint(0, vocab, (samples, positions), generator=torch.Generator().manual_seed(seed))


def by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Call nodes keyed by ``spikec_name``."""
    return {n.meta["spikec_name"]: n for n in gm.graph.nodes if n.op == "call_function"}


def calls_to(gm: fx.GraphModule, fn: Callable) -> list[fx.Node]:
    """The call nodes of ``gm`` targeting ``fn``."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is fn]
