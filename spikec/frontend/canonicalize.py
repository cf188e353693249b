"""Turn a captured (aten-level) graph into spikec's canonical graph.

The captured graph is read region by region: torch.export's ``nn_module_stack`` names the
module instance every aten node ran in, and the module's class says what the region computes
(a LayerNorm, an attention core, a GELU, ...). Each region becomes one ``spikec.core.ops``
call whose parameters and hyper-parameters are read from the Hugging Face module itself and
from the captured nodes (attention scale, head shapes). Data flow between regions is followed
exactly: the canonical graph has an edge wherever the captured graph has one, so an op outside
every known region on the path from ``input_ids`` to the logits (a scaled residual, a custom
norm) is refused with ``UnsupportedError`` rather than dropped. What only feeds regions from the
side (causal masks, position ids, rotary tables, size queries) is dead once the regions are
outlined and disappears. The result is checked against the model's own logits.
"""

from __future__ import annotations

import graphlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from spikec.core import ops
from spikec.core.errors import UnsupportedError

from .capture import WRAPPED_PREFIX, capture
from .models import LoadedModel

aten = torch.ops.aten

SUPPORTED_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
CANONICAL_OPS = frozenset(
    {ops.embedding, ops.layer_norm, ops.rms_norm, ops.attention, ops.activation,
     ops.gated_activation, ops.add, ops.affine}
)
META_KEYS = ("spikec_name", "role", "module_path")
AFFINE_ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out", "lm_head")
CUSTOM_PASS_HINT = "write a pass or open an issue: see README 'Custom passes'"
# Largest accepted |canonical - model| logits difference, relative to max(1, max |logits|).
CHECK_TOLERANCE = 1e-3

# Captured ops that only re-label a value when its shape, dtype and device stay the same.
_NEUTRAL_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default,
    aten.clone.default, aten.contiguous.default, aten._to_copy.default, aten.detach.default,
    aten.expand.default, aten.slice.Tensor, aten.lift_fresh_copy.default,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other,
}
_IGNORED_OPS = {aten._assert_tensor_metadata.default, aten.sym_size.int}


def canonicalize(gm: fx.GraphModule, loaded: LoadedModel) -> fx.GraphModule:
    """Build the canonical graph of ``gm`` (a graph from :func:`capture` of ``loaded.model``).

    Guarantees: one placeholder ``input_ids``; output the logits tensor; every call_function
    targets an op of ``CANONICAL_OPS`` with all arguments positional, in signature order;
    parameters are ``get_attr`` nodes on cloned ``nn.Parameter``s (``requires_grad=False``) owned
    by the returned module, affine weights ``[out, in]``; every call_function carries
    ``meta["spikec_name"]`` (unique), ``meta["role"]`` and ``meta["module_path"]``; fused affines
    also carry ``meta["source_modules"]``. Raises ``UnsupportedError`` for architectures other
    than GPT-2 and Llama and for captured ops outside known regions; ``RuntimeError`` (an
    internal error) if the result does not reproduce the model's logits.
    """
    _check_architecture(loaded)
    canonical = _Builder(loaded).build(gm)
    ids = _example_ids(loaded.model.config, batch=2, positions=9)
    diff, scale = _compare(canonical, loaded.model, ids)
    if not diff <= CHECK_TOLERANCE * max(1.0, scale):
        raise RuntimeError(
            f"internal error: the canonical graph of {loaded.name} differs from the model by "
            f"{diff:.3g} in logits (scale {scale:.3g}); please report this"
        )
    return canonical


def capture_canonical(loaded: LoadedModel, seq_len: int = 16) -> fx.GraphModule:
    """Capture ``loaded.model`` on seeded random ids of ``seq_len`` positions, canonicalize it
    and check it against the model (see :func:`canonicalize`)."""
    _check_architecture(loaded)
    ids = _example_ids(loaded.model.config, batch=1, positions=max(2, seq_len))
    return canonicalize(capture(loaded.model, ids), loaded)


def check_against_model(gm: fx.GraphModule, model: nn.Module, ids: torch.Tensor) -> float:
    """Max abs difference between ``gm(ids)`` and the model's logits for ``ids``."""
    return _compare(gm, model, ids)[0]


def _compare(gm: fx.GraphModule, model: nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        out = gm(ids)
    if out.shape != ref.shape:
        return math.inf, float(ref.abs().max())
    return float((out - ref).abs().max()), float(ref.abs().max())


def _example_ids(config, batch: int, positions: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, config.vocab_size, (batch, positions), generator=generator)


def _check_architecture(loaded: LoadedModel) -> None:
    arch = type(loaded.model).__name__
    if arch not in SUPPORTED_ARCHITECTURES:
        model_type = getattr(loaded.model.config, "model_type", "?")
        raise UnsupportedError(
            f"architecture {arch} (model type {model_type!r}, model {loaded.name!r}) is not supported; "
            "spikec converts GPT-2 (GPT2LMHeadModel) and Llama (LlamaForCausalLM, e.g. SmolLM2) models",
            hint=CUSTOM_PASS_HINT,
        )


# ---------------------------------------------------------------------------- values flowing through the captured graph


class _Aux:
    """A value that does not depend on the hidden states (sizes, masks, positions, rotary tables)."""


class _Bad:
    """The result of an op that could not be mapped (the reason is recorded once)."""


AUX, BAD = _Aux(), _Bad()


class _Ids:
    """The token ids (the placeholder, possibly re-viewed)."""


IDS = _Ids()


@dataclass(eq=False)
class _Hidden:
    node: fx.Node


@dataclass(eq=False)
class _TokenEmbedding:
    path: str
    module: nn.Embedding
    node: fx.Node | None = None


@dataclass(eq=False)
class _PositionEmbedding:
    path: str
    module: nn.Embedding


@dataclass(eq=False)
class _PendingLinear:
    """A projection whose role (and fusion with its siblings) its consumer decides."""

    path: str
    module: nn.Module
    x: Any
    node: fx.Node | None = None


@dataclass(eq=False)
class _PendingActivation:
    """An activation that may still merge with a gate product into ``gated_activation``."""

    path: str
    kind: str
    x: Any
    node: fx.Node | None = None


_DATA = (_Hidden, _TokenEmbedding, _PositionEmbedding, _PendingLinear, _PendingActivation)


class _Refused(Exception):
    """A region or op that cannot be mapped; collected into one UnsupportedError."""


@dataclass
class _Region:
    kind: str
    path: str  # Hugging Face module path
    cls: str
    module: nn.Module
    nodes: list[fx.Node] = field(default_factory=list)


# ---------------------------------------------------------------------------- region classification


def _region_kinds() -> dict[type, str]:
    from transformers.activations import (
        GELUActivation, GELUTanh, NewGELUActivation, PytorchGELUTanh, SiLUActivation,
    )
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm
    from transformers.pytorch_utils import Conv1D

    return {
        nn.LayerNorm: "norm", LlamaRMSNorm: "norm",
        nn.Linear: "linear", Conv1D: "linear",
        nn.Embedding: "embedding",
        nn.Dropout: "dropout",
        NewGELUActivation: "activation", GELUTanh: "activation", PytorchGELUTanh: "activation",
        GELUActivation: "activation", SiLUActivation: "activation", nn.SiLU: "activation",
        nn.GELU: "activation", nn.ReLU: "activation",
        GPT2Attention: "attention", LlamaAttention: "attention",
        LlamaMLP: "gated_mlp",
    }


def _activation_kind(module: nn.Module) -> str:
    from transformers.activations import GELUActivation, GELUTanh, NewGELUActivation, PytorchGELUTanh

    if isinstance(module, (NewGELUActivation, GELUTanh, PytorchGELUTanh)):
        return "gelu_tanh"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, GELUActivation):
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    return "silu"


def _hf_path(path: str) -> str:
    if path == WRAPPED_PREFIX.rstrip("."):
        return ""
    return path[len(WRAPPED_PREFIX):] if path.startswith(WRAPPED_PREFIX) else path


def _innermost(node: fx.Node) -> tuple[str, str, str] | None:
    """(call key, HF module path, class qualname) of the innermost module ``node`` ran in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, (path, cls) = list(stack.items())[-1]
    return key, _hf_path(path), cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))


def _is_neutral(node: fx.Node) -> bool:
    if node.target == aten.dropout.default:  # only in graphs that were not decomposed
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return train is False
    return node.target in _NEUTRAL_OPS


def _shape_key(value: Any) -> tuple | None:
    if not isinstance(value, torch.Tensor):
        return None
    return tuple(str(s) for s in value.shape), value.dtype, str(value.device)


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


_BLOCK_RE = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks)\.(\d+)(?:\.|$)")


def _block_index(path: str) -> int | None:
    m = _BLOCK_RE.search(path)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------- the builder


class _Builder:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.kinds = _region_kinds()
        self.graph = fx.Graph()
        self.params: dict[str, nn.Parameter] = {}
        self.names: set[str] = set()
        self.norms_in_block: dict[int, int] = {}
        self.seen_block = False
        self.env: dict[fx.Node, Any] = {}
        self.refusals: dict[fx.Node, str] = {}
        self.input_ids: fx.Node | None = None

    # ------------------------------------------------------------ driver

    def build(self, gm: fx.GraphModule) -> fx.GraphModule:
        self.input_ids = self.graph.placeholder("input_ids")
        self.input_ids.meta["spikec_name"] = "input_ids"
        units, unit_of = self._units(gm)
        sorter = graphlib.TopologicalSorter()
        for uid, unit in units.items():
            nodes = unit.nodes if isinstance(unit, _Region) else [unit]
            deps = {unit_of[i] for n in nodes for i in n.all_input_nodes if unit_of[i] != uid}
            sorter.add(uid, *deps)
        try:
            order = list(sorter.static_order())
        except graphlib.CycleError:
            raise UnsupportedError(
                f"the captured graph of {self.loaded.name} interleaves modules in a way spikec cannot outline",
                hint=CUSTOM_PASS_HINT,
            ) from None
        # The output goes last so that nothing is emitted after it.
        order.sort(key=lambda uid: isinstance(units[uid], fx.Node) and units[uid].op == "output")
        with torch.no_grad():
            for uid in order:
                unit = units[uid]
                if isinstance(unit, _Region):
                    self._visit_region(unit)
                else:
                    self._visit_node(unit)
        self.graph.eliminate_dead_code()  # what only dead captured ops needed
        self.graph.lint()
        used = {n.target for n in self.graph.nodes if n.op == "get_attr"}
        params = {k: v for k, v in self.params.items() if k in used}
        gm_out = fx.GraphModule(params, self.graph, class_name="SpikecCanonical")
        gm_out.meta["spikec_source"] = {"spec": dict(self.loaded.spec), "family": self.loaded.family}
        return gm_out

    def _units(self, gm: fx.GraphModule) -> tuple[dict[Any, Any], dict[fx.Node, Any]]:
        """Group the captured nodes into regions (one per module call of a known class) and loose nodes."""
        units: dict[Any, Any] = {}
        unit_of: dict[fx.Node, Any] = {}
        for node in gm.graph.nodes:
            region = None
            info = _innermost(node) if node.op == "call_function" else None
            if info is not None:
                key, path, cls = info
                module = self._submodule(path)
                kind = self.kinds.get(type(module)) if module is not None else None
                if kind is not None:
                    region = units.get(("region", key))
                    if region is None:
                        region = units[("region", key)] = _Region(kind, path, cls, module)
                    region.nodes.append(node)
                    unit_of[node] = ("region", key)
            if region is None:
                units[("node", node.name)] = node
                unit_of[node] = ("node", node.name)
        return units, unit_of

    def _submodule(self, path: str) -> nn.Module | None:
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            return None

    # ------------------------------------------------------------ loose nodes

    def _visit_node(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.env[node] = IDS
            return
        if node.op in ("get_attr", "call_module"):
            self.env[node] = AUX
            return
        if node.op == "output":
            self._visit_output(node)
            return
        inputs = [self.env[n] for n in node.all_input_nodes]
        if any(v is BAD for v in inputs):
            self.env[node] = BAD
            return
        first = node.args[0] if node.args else None
        first_value = self.env.get(first) if isinstance(first, fx.Node) else None
        if _is_neutral(node) and (first_value is IDS or isinstance(first_value, _DATA)):
            if _shape_key(node.meta.get("val")) == _shape_key(first.meta.get("val")):
                self.env[node] = first_value
                return
        data = [v for v in inputs if isinstance(v, _DATA)]
        if not data or node.target in _IGNORED_OPS or not isinstance(node.meta.get("val"), (torch.Tensor, list, tuple)):
            # Independent of the hidden states, or only a size / metadata query.
            self.env[node] = AUX
            return
        if node.target == aten.add.Tensor and len(data) == 2 and len(node.args) == 2 and not node.kwargs:
            try:
                self.env[node] = self._add(node)
            except _Refused as e:
                self._refuse(node, str(e))
            return
        self._refuse(node, self._describe(node))

    def _add(self, node: fx.Node) -> _Hidden:
        a, b = (self.env[n] for n in node.args)
        info = _innermost(node)
        path = info[1] if info else ""
        pair = {type(a), type(b)}
        if pair == {_TokenEmbedding, _PositionEmbedding}:
            tok, pos = (a, b) if isinstance(a, _TokenEmbedding) else (b, a)
            w = self._param("embed.weight", tok.module.weight)
            pw = self._param("embed.position_weight", pos.module.weight)
            out = self._emit(ops.embedding, (self.input_ids, w, pw), "embedding", tok.path)
            out.meta["source_modules"] = [tok.path, pos.path]
            return _Hidden(out)
        xa, xb = self._materialize(a), self._materialize(b)
        return _Hidden(self._emit(ops.add, (xa, xb), "residual", path))

    def _visit_output(self, node: fx.Node) -> None:
        outs = node.args[0]
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if len(outs) != 1 or not isinstance(outs[0], fx.Node):
            raise UnsupportedError(f"the captured graph of {self.loaded.name} returns {len(outs)} values, not logits")
        value = self.env[outs[0]]
        if value is BAD:
            self._raise_refusals()
        if not isinstance(value, _DATA):
            raise UnsupportedError(f"the output of {self.loaded.name} does not depend on its input ids", hint=CUSTOM_PASS_HINT)
        try:
            logits = self._materialize(value, role="lm_head" if isinstance(value, _PendingLinear) else None)
        except _Refused as e:
            self._refuse(outs[0], str(e))
            self._raise_refusals()
        self.graph.output(logits)

    # ------------------------------------------------------------ regions

    def _visit_region(self, region: _Region) -> None:
        members = set(region.nodes)
        ext: list[fx.Node] = []
        for n in region.nodes:
            for i in n.all_input_nodes:
                if i not in members and i not in ext:
                    ext.append(i)
        values = [self.env[i] for i in ext]
        # No-op re-labellings of an input inside the region (e.g. x.to(float32) of a float32
        # x, which export aliases) may be used outside it: they stay the input's value.
        passthrough: dict[fx.Node, Any] = {}
        for n in region.nodes:
            src = n.args[0] if n.args else None
            if _is_neutral(n) and isinstance(src, fx.Node):
                v = passthrough.get(src) if src in members else self.env.get(src)
                if (v is IDS or isinstance(v, _DATA)) and _shape_key(n.meta.get("val")) == _shape_key(src.meta.get("val")):
                    passthrough[n] = v
        outputs = [n for n in region.nodes if n not in passthrough and any(u not in members for u in n.users)]
        for n in region.nodes:
            self.env[n] = passthrough.get(n, AUX)
        if any(v is BAD for v in values):
            for n in region.nodes:
                self.env[n] = BAD
            return
        data = [(i, v) for i, v in zip(ext, values) if v is IDS or isinstance(v, _DATA)]
        if not data and region.kind != "embedding":
            return  # e.g. a module that only builds masks or tables
        if not outputs and region.kind == "dropout":
            return  # eval-mode dropout captured as a no-op: already passed through
        try:
            if len(outputs) != 1:
                raise _Refused(f"{len(outputs)} results leave it where spikec expects one")
            handler = getattr(self, f"_region_{region.kind}")
            self.env[outputs[0]] = handler(region, data)
        except _Refused as e:
            anchor = outputs[0] if outputs else region.nodes[-1]
            self._refuse(anchor, f"{region.path or '<root>'} ({region.cls.rsplit('.', 1)[-1]}): {e}")
            for n in outputs:
                self.env[n] = BAD

    @staticmethod
    def _single(data: list[tuple[fx.Node, Any]], what: str) -> Any:
        if len(data) != 1 or data[0][1] is IDS:
            raise _Refused(f"expected one hidden-state input to the {what}, found {len(data)}")
        return data[0][1]

    def _region_dropout(self, region: _Region, data) -> Any:
        return self._single(data, "dropout")

    def _region_embedding(self, region: _Region, data) -> Any:
        module = region.module
        if getattr(module, "max_norm", None) is not None:
            raise _Refused("embeddings with max_norm are not supported")
        if len(data) == 1 and data[0][1] is IDS:
            return _TokenEmbedding(region.path, module)
        if not data:  # looked up by positions computed from sizes alone
            return _PositionEmbedding(region.path, module)
        raise _Refused("an embedding looked up by something other than the input ids")

    def _region_activation(self, region: _Region, data) -> Any:
        x = self._single(data, "activation")
        return _PendingActivation(region.path, _activation_kind(region.module), x)

    def _region_linear(self, region: _Region, data) -> Any:
        return _PendingLinear(region.path, region.module, self._single(data, "projection"))

    def _region_norm(self, region: _Region, data) -> Any:
        x = self._materialize(self._single(data, "norm"))
        module = region.module
        name = self._name("norm", region.path)
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                raise _Refused("LayerNorm over more than the last axis")
            w = self._param(f"{name}.weight", module.weight)
            b = self._param(f"{name}.bias", module.bias)
            return _Hidden(self._emit(ops.layer_norm, (x, w, b, float(module.eps)), "norm", region.path, name))
        eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
        w = self._param(f"{name}.weight", module.weight)
        return _Hidden(self._emit(ops.rms_norm, (x, w, eps), "norm", region.path, name))

    def _region_attention(self, region: _Region, data) -> Any:
        module = region.module
        if not getattr(module, "is_causal", False):
            raise _Refused("non-causal attention")
        sdpa = [n for n in region.nodes if n.target == aten.scaled_dot_product_attention.default]
        if len(sdpa) != 1:
            raise _Refused(f"expected one scaled_dot_product_attention, found {len(sdpa)} (is attention sdpa?)")
        node = sdpa[0]
        args = list(node.args) + [None, 0.0, False][len(node.args) - 3:]
        mask, dropout_p = args[3], args[4]
        if dropout_p not in (0, 0.0):
            raise _Refused("attention dropout is active")
        if isinstance(mask, fx.Node) and self.env.get(mask) is not AUX:
            raise _Refused("an attention mask that depends on the hidden states")
        q_val = node.args[0].meta.get("val")
        num_heads, head_dim = int(q_val.shape[1]), int(q_val.shape[-1])

        projections = [v for _, v in data]
        if not all(isinstance(v, _PendingLinear) for v in projections):
            raise _Refused("attention inputs that are not projections of one hidden state")
        qkv, sources = self._fused_qkv(module, projections)
        width = qkv[0].shape[0]
        num_kv_heads = (width // head_dim - num_heads) // 2
        if width != (num_heads + 2 * num_kv_heads) * head_dim or num_kv_heads < 1:
            raise _Refused(f"q/k/v width {width} does not fit {num_heads} heads of {head_dim}")
        scale = node.kwargs.get("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)
        rope_theta = self._rope_theta(region, head_dim)

        x = self._materialize(projections[0].x)
        qkv_name = self._name("qkv", region.path)
        w = self._param(f"{qkv_name}.weight", qkv[0])
        b = self._param(f"{qkv_name}.bias", qkv[1])
        qkv_path = sources[0] if len(sources) == 1 else region.path
        fused = self._emit(ops.affine, (x, w, b), "qkv", qkv_path, qkv_name)
        fused.meta["source_modules"] = sources
        core = self._emit(
            ops.attention,
            (fused, num_heads, num_kv_heads, head_dim, rope_theta, scale, True),
            "attention",
            region.path,
        )
        return _Hidden(core)

    def _fused_qkv(self, module: nn.Module, projections: list[_PendingLinear]):
        if len({id(p.x) for p in projections}) != 1:
            raise _Refused("q, k and v are projections of different inputs")
        if len(projections) == 1:
            p = projections[0]
            return _linear_params(p.module), [p.path]
        by_name = {}
        for p in projections:
            for attr in ("q_proj", "k_proj", "v_proj"):
                if getattr(module, attr, None) is p.module:
                    by_name[attr] = p
        if len(projections) != 3 or len(by_name) != 3:
            raise _Refused("expected one fused qkv projection or q_proj, k_proj and v_proj")
        parts = [by_name[a] for a in ("q_proj", "k_proj", "v_proj")]
        return _concat_linear([p.module for p in parts]), [p.path for p in parts]

    def _rope_theta(self, region: _Region, head_dim: int) -> float:
        """Rotary base if the attention region reads tables made by a rotary embedding module."""
        rotary_paths = set()
        for n in region.nodes:
            for i in n.all_input_nodes:
                info = _innermost(i) if i.op == "call_function" else None
                if info and "Rotary" in info[2].rsplit(".", 1)[-1]:
                    rotary_paths.add(info[1])
        if not rotary_paths:
            return 0.0
        if len(rotary_paths) != 1:
            raise _Refused("more than one rotary embedding feeds one attention")
        rotary = self._submodule(rotary_paths.pop())
        rope = getattr(self.model.config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", getattr(rotary, "rope_type", "default"))
        theta = rope.get("rope_theta", getattr(self.model.config, "rope_theta", None))
        if rope_type != "default" or theta is None:
            raise _Refused(f"rotary embeddings of type {rope_type!r} (only 'default' is supported)")
        if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
            raise _Refused("scaled rotary embeddings")
        expected = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        inv_freq = getattr(rotary, "inv_freq", None)
        if inv_freq is None or inv_freq.shape != expected.shape or not torch.allclose(inv_freq.float(), expected, rtol=1e-5):
            raise _Refused(f"rotary frequencies that do not match rope_theta={theta}")
        return float(theta)

    def _region_gated_mlp(self, region: _Region, data) -> Any:
        compute = [n for n in region.nodes if n.target not in _IGNORED_OPS]
        if len(compute) != 1 or compute[0].target != aten.mul.Tensor or len(data) != 2:
            ops_seen = ", ".join(_op_name(n) for n in compute)
            raise _Refused(f"expected act(gate) * up, found {ops_seen}")
        act = next((v for _, v in data if isinstance(v, _PendingActivation)), None)
        up = next((v for _, v in data if isinstance(v, _PendingLinear)), None)
        module = region.module
        if act is None or up is None or not isinstance(act.x, _PendingLinear):
            raise _Refused("expected act(gate_proj(x)) * up_proj(x)")
        gate = act.x
        if gate.module is not getattr(module, "gate_proj", None) or up.module is not getattr(module, "up_proj", None):
            raise _Refused("the gate and up projections are not this MLP's gate_proj and up_proj")
        if gate.x is not up.x:
            raise _Refused("gate and up projections of different inputs")
        x = self._materialize(gate.x)
        name = self._name("mlp_in", region.path)
        weight, bias = _concat_linear([gate.module, up.module])
        w = self._param(f"{name}.weight", weight)
        b = self._param(f"{name}.bias", bias)
        fused = self._emit(ops.affine, (x, w, b), "mlp_in", region.path, name)
        fused.meta["source_modules"] = [gate.path, up.path]
        out = self._emit(ops.gated_activation, (fused, act.kind), "activation", act.path)
        return _Hidden(out)

    # ------------------------------------------------------------ materialization

    def _materialize(self, value: Any, role: str | None = None) -> fx.Node:
        """The canonical node of ``value``, emitting a pending projection/activation/embedding."""
        if isinstance(value, _Hidden):
            return value.node
        if getattr(value, "node", None) is not None:
            return value.node
        if isinstance(value, _TokenEmbedding):
            w = self._param("embed.weight", value.module.weight)
            value.node = self._emit(ops.embedding, (self.input_ids, w, None), "embedding", value.path)
            return value.node
        if isinstance(value, _PendingActivation):
            x = self._materialize(value.x, role="mlp_in")
            value.node = self._emit(ops.activation, (x, value.kind), "activation", value.path)
            return value.node
        if isinstance(value, _PendingLinear):
            x = self._materialize(value.x)
            if role is None:
                producer = x.meta.get("role")
                role = {"attention": "attn_out", "activation": "mlp_out"}.get(producer)
                if role is None:
                    raise _Refused(f"projection {value.path} after a {producer or 'non-canonical'} node, where spikec expects none")
            name = self._name(role, value.path)
            weight, bias = _linear_params(value.module)
            w = self._param(f"{name}.weight", weight)
            b = self._param(f"{name}.bias", bias)
            value.node = self._emit(ops.affine, (x, w, b), role, value.path, name)
            return value.node
        if isinstance(value, _PositionEmbedding):
            raise _Refused(f"position embedding {value.path} used other than added to the token embedding")
        raise _Refused("the token ids used as a hidden state")

    def _emit(self, target, args: tuple, role: str, module_path: str, name: str | None = None) -> fx.Node:
        if name is None:
            name = self._name(role, module_path, args)
        node = self.graph.create_node("call_function", target, args, {}, name=name.replace(".", "_"))
        node.meta.update(spikec_name=name, role=role, module_path=module_path)
        return node

    def _param(self, name: str, tensor: torch.Tensor | None) -> fx.Node | None:
        """A get_attr on a clone of ``tensor``, as attribute ``name`` with dots made underscores
        (flat, since names like ``h.0.mlp.in`` are no valid attribute paths)."""
        if tensor is None:
            return None
        target = name.replace(".", "_")
        if target in self.params:
            raise AssertionError(f"parameter {target} emitted twice")
        self.params[target] = nn.Parameter(tensor.detach().to(torch.float32).clone(memory_format=torch.contiguous_format), requires_grad=False)
        return self.graph.get_attr(target)

    def _name(self, role: str, module_path: str, args: tuple = ()) -> str:
        """Readable unique name: ``embed``, ``h.<i>.ln_1``, ``h.<i>.attn.qkv``, ..., ``ln_f``, ``lm_head``."""
        block = _block_index(module_path)
        if block is not None:
            self.seen_block = True
        if role == "embedding":
            base = "embed"
        elif role == "lm_head":
            base = "lm_head"
        elif role == "norm":
            if block is None:
                base = "ln_f" if self.seen_block else "ln_embed"
            else:
                # Counted once per norm (names are requested once per node).
                k = self.norms_in_block.get(block, 0) + 1
                self.norms_in_block[block] = k
                base = f"h.{block}.ln_{k}"
        else:
            suffix = {
                "qkv": "attn.qkv", "attention": "attn.core", "attn_out": "attn.out",
                "mlp_in": "mlp.in", "activation": "mlp.act", "mlp_out": "mlp.out",
            }.get(role)
            if role == "residual":
                roles = {a.meta.get("role") for a in args if isinstance(a, fx.Node)}
                suffix = "add_attn" if "attn_out" in roles else "add_mlp" if "mlp_out" in roles else "add"
            if suffix is None:
                suffix = role
            base = f"h.{block}.{suffix}" if block is not None else suffix
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}.{k}", k + 1
        self.names.add(name)
        return name

    # ------------------------------------------------------------ refusals

    def _describe(self, node: fx.Node) -> str:
        info = _innermost(node)
        where = f"{info[1] or '<root>'} ({info[2].rsplit('.', 1)[-1]})" if info else "<no module>"
        return f"{_op_name(node)} in {where}"

    def _refuse(self, node: fx.Node, reason: str) -> None:
        self.refusals[node] = reason
        self.env[node] = BAD

    def _raise_refusals(self) -> None:
        reasons = list(dict.fromkeys(self.refusals.values()))
        shown = "; ".join(reasons[:6]) + (f"; and {len(reasons) - 6} more" if len(reasons) > 6 else "")
        arch = type(self.model).__name__
        raise UnsupportedError(
            f"{len(reasons)} captured operation(s) of {self.loaded.name} ({arch}) cannot be mapped to "
            f"spikec's canonical operators: {shown}",
            hint=CUSTOM_PASS_HINT,
        )


def _linear_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias) of nn.Linear or GPT-2's Conv1D (whose weight is [in, out])."""
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
    return weight.detach(), None if module.bias is None else module.bias.detach()


def _concat_linear(modules: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-wise concatenation of projections of one input (zero bias where one is missing)."""
    params = [_linear_params(m) for m in modules]
    weight = torch.cat([w for w, _ in params], dim=0)
    if all(b is None for _, b in params):
        return weight, None
    bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in params])
    return weight, bias
