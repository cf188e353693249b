"""The canonical graph builder: turns a captured graph, read as regions, into spikec ops.

Each region (see :mod:`spikec.frontend.regions`) becomes one ``spikec.core.ops`` call whose
parameters and hyper-parameters are read from the Hugging Face module itself and from the
captured nodes (attention scale, head shapes); what the module classes and attribute names mean
comes from the model's :class:`~spikec.frontend.architectures.Architecture`. Data flow between
regions is followed exactly: the canonical graph has an edge wherever the captured graph has
one, so an op outside every known region on the path from ``input_ids`` to the logits is
refused rather than dropped. Regions and loose nodes are visited in a data-flow order of their
own (a region is many captured nodes), with symbolic values, which is why this is a loop of
its own and not a ``torch.fx.Interpreter``.
"""

from __future__ import annotations

import graphlib
import math
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn

from spikec.core import ops
from spikec.core.errors import UnsupportedError

from .architectures import Architecture, activation_kind, common_module_kinds, rms_norm_eps, rotary_dim
from .models import LoadedModel
from .regions import (
    AUX, BAD, DATA, IDS, IGNORED_OPS, RESHAPE_OPS, Hidden, PendingActivation, PendingLinear, PositionEmbedding,
    Refused, Region, TokenEmbedding, describe, group_units, innermost, is_neutral, op_name,
    rows_key, shape_key, submodule,
)

aten = torch.ops.aten

CUSTOM_PASS_HINT = "write a pass or open an issue: see README 'Custom passes'"


def per_head_to_concatenated(t: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a fused qkv weight ``[H * 3 * head_dim, in]`` (or bias ``[H * 3 * head_dim]``)
    ordered ``[head, q|k|v, head_dim]`` (GPT-NeoX) reordered to ``[q | k | v]``, heads inside each."""
    rest = t.shape[1:]
    return t.reshape(num_heads, 3, head_dim, *rest).transpose(0, 1).reshape(3 * num_heads * head_dim, *rest)


class CanonicalBuilder:
    """Builds the canonical graph of one captured graph of ``loaded.model`` (of architecture ``arch``)."""

    def __init__(self, loaded: LoadedModel, arch: Architecture, share_weights: bool = False,
                 onload: Callable[[str], None] | None = None):
        self.loaded = loaded
        self.onload = onload  # called with a region's module path before its weights are read
        self.share_weights = share_weights
        self.shared_storages: set[int] = set()  # storages of the model already given to a parameter
        self.arch = arch
        self.model = loaded.model
        self.kinds = {**common_module_kinds(), **arch.module_kinds()}
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
        """The canonical GraphModule of ``gm`` (see :func:`spikec.frontend.canonicalize.canonicalize`)."""
        self.input_ids = self.graph.placeholder("input_ids")
        self.input_ids.meta["spikec_name"] = "input_ids"
        units, unit_of = group_units(gm, self.model, self.kinds)
        sorter = graphlib.TopologicalSorter()
        for uid, unit in units.items():
            nodes = unit.nodes if isinstance(unit, Region) else [unit]
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
                if isinstance(unit, Region):
                    if self.onload is not None:
                        self.onload(unit.path)
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
        if is_neutral(node) and (first_value is IDS or isinstance(first_value, DATA)):
            if shape_key(node.meta.get("val")) == shape_key(first.meta.get("val")):
                self.env[node] = first_value
                return
        if node.target in RESHAPE_OPS and isinstance(first_value, DATA):
            key = rows_key(node.meta.get("val"))
            if key is not None and key == rows_key(first.meta.get("val")):
                self.env[node] = first_value
                return
        data = [v for v in inputs if isinstance(v, DATA)]
        if not data or node.target in IGNORED_OPS or not isinstance(node.meta.get("val"), (torch.Tensor, list, tuple)):
            # Independent of the hidden states, or only a size / metadata query.
            self.env[node] = AUX
            return
        if node.target == aten.add.Tensor and len(data) == 2 and len(node.args) == 2 and not node.kwargs:
            try:
                self.env[node] = self._add(node)
            except Refused as e:
                self._refuse(node, str(e))
            return
        self._refuse(node, describe(node))

    def _add(self, node: fx.Node) -> Hidden:
        a, b = (self.env[n] for n in node.args)
        info = innermost(node)
        path = info[1] if info else ""
        pair = {type(a), type(b)}
        if pair == {TokenEmbedding, PositionEmbedding}:
            tok, pos = (a, b) if isinstance(a, TokenEmbedding) else (b, a)
            if self._is_token_type(pos):
                # Token types all 0: F.embedding(ids, w) + t[0] == F.embedding(ids, w + t[0]) element for element.
                return TokenEmbedding(tok.path, tok.module, tok.weight + pos.module.weight[0])
            w = self._param("embed.weight", tok.weight)
            pw = self._param("embed.position_weight", pos.weight)
            out = self._emit(ops.embedding, (self.input_ids, w, pw), "embedding", tok.path)
            out.meta["source_modules"] = [tok.path, pos.path]
            return Hidden(out)
        xa, xb = self._materialize(a), self._materialize(b)
        return Hidden(self._emit(ops.add, (xa, xb), "residual", path))

    def _is_token_type(self, value: PositionEmbedding) -> bool:
        """Whether ``value`` is the architecture's token-type embedding, looked up by its all-0 buffer."""
        attr = self.arch.token_type_embedding
        return attr is not None and value.path.rsplit(".", 1)[-1] == attr

    def _visit_output(self, node: fx.Node) -> None:
        outs = node.args[0]
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if len(outs) != 1 or not isinstance(outs[0], fx.Node):
            raise UnsupportedError(f"the captured graph of {self.loaded.name} returns {len(outs)} values, not logits")
        value = self.env[outs[0]]
        if value is BAD:
            self._raise_refusals()
        if not isinstance(value, DATA):
            raise UnsupportedError(f"the output of {self.loaded.name} does not depend on its input ids", hint=CUSTOM_PASS_HINT)
        try:
            logits = self._materialize(value, role="lm_head" if isinstance(value, PendingLinear) else None)
        except Refused as e:
            self._refuse(outs[0], str(e))
            self._raise_refusals()
        self.graph.output(logits)

    # ------------------------------------------------------------ regions

    def _visit_region(self, region: Region) -> None:
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
            if is_neutral(n) and isinstance(src, fx.Node):
                v = passthrough.get(src) if src in members else self.env.get(src)
                if (v is IDS or isinstance(v, DATA)) and shape_key(n.meta.get("val")) == shape_key(src.meta.get("val")):
                    passthrough[n] = v
        outputs = [n for n in region.nodes if n not in passthrough and any(u not in members for u in n.users)]
        for n in region.nodes:
            self.env[n] = passthrough.get(n, AUX)
        if any(v is BAD for v in values):
            for n in region.nodes:
                self.env[n] = BAD
            return
        data = [(i, v) for i, v in zip(ext, values) if v is IDS or isinstance(v, DATA)]
        if not data and region.kind != "embedding":
            return  # e.g. a module that only builds masks or tables
        if not outputs and region.kind == "dropout":
            return  # eval-mode dropout captured as a no-op: already passed through
        try:
            if len(outputs) != 1:
                raise Refused(f"{len(outputs)} results leave it where spikec expects one")
            handler = getattr(self, f"_region_{region.kind}")
            self.env[outputs[0]] = handler(region, data)
        except Refused as e:
            anchor = outputs[0] if outputs else region.nodes[-1]
            self._refuse(anchor, f"{region.path or '<root>'} ({region.cls.rsplit('.', 1)[-1]}): {e}")
            for n in outputs:
                self.env[n] = BAD

    @staticmethod
    def _single(data: list[tuple[fx.Node, Any]], what: str) -> Any:
        if len(data) != 1 or data[0][1] is IDS:
            raise Refused(f"expected one hidden-state input to the {what}, found {len(data)}")
        return data[0][1]

    def _region_dropout(self, region: Region, data) -> Any:
        return self._single(data, "dropout")

    def _region_embedding(self, region: Region, data) -> Any:
        module = region.module
        if getattr(module, "max_norm", None) is not None:
            raise Refused("embeddings with max_norm are not supported")
        if len(data) == 1 and data[0][1] is IDS:
            return TokenEmbedding(region.path, module, module.weight)
        if not data:  # looked up by positions computed from sizes alone (from row `offset` on: OPT)
            return PositionEmbedding(region.path, module, module.weight[int(getattr(module, "offset", 0)):])
        raise Refused("an embedding looked up by something other than the input ids")

    def _region_scaled_embedding(self, region: Region, data) -> Any:
        module = region.module
        if len(data) != 1 or data[0][1] is not IDS:
            raise Refused("a scaled embedding looked up by something other than the input ids")
        # F.embedding(ids, w) * s == F.embedding(ids, w * s) element for element.
        return TokenEmbedding(region.path, module, module.weight * module.embed_scale.to(module.weight.dtype))

    def _region_activation(self, region: Region, data) -> Any:
        x = self._single(data, "activation")
        return PendingActivation(region.path, activation_kind(region.module), x)

    def _region_linear(self, region: Region, data) -> Any:
        return PendingLinear(region.path, region.module, self._single(data, "projection"))

    def _region_layer_norm(self, region: Region, data) -> Any:
        x = self._materialize(self._single(data, "norm"))
        module = region.module
        name = self._name("norm", region.path)
        if len(module.normalized_shape) != 1:
            raise Refused("LayerNorm over more than the last axis")
        w = self._param(f"{name}.weight", module.weight)
        b = self._param(f"{name}.bias", module.bias)
        return Hidden(self._emit(ops.layer_norm, (x, w, b, float(module.eps)), "norm", region.path, name))

    def _region_rms_norm(self, region: Region, data) -> Any:
        return self._rms_norm(region, data, region.module.weight)

    def _region_offset_rms_norm(self, region: Region, data) -> Any:
        # x_normed * (1 + w) in float32, as the module computes it.
        return self._rms_norm(region, data, 1.0 + region.module.weight.float())

    def _rms_norm(self, region: Region, data, weight: torch.Tensor) -> Hidden:
        x = self._materialize(self._single(data, "norm"))
        name = self._name("norm", region.path)
        w = self._param(f"{name}.weight", weight)
        return Hidden(self._emit(ops.rms_norm, (x, w, rms_norm_eps(region.module)), "norm", region.path, name))

    def _region_attention(self, region: Region, data) -> Any:
        module = region.module
        if bool(getattr(module, "is_causal", False)) != self.arch.causal:
            raise Refused("non-causal attention" if self.arch.causal else "causal attention in an encoder")
        sdpa = [n for n in region.nodes if n.target == aten.scaled_dot_product_attention.default]
        if len(sdpa) != 1:
            raise Refused(f"expected one scaled_dot_product_attention, found {len(sdpa)} (is attention sdpa?)")
        node = sdpa[0]
        args = list(node.args) + [None, 0.0, False][len(node.args) - 3:]
        mask, dropout_p = args[3], args[4]
        if dropout_p not in (0, 0.0):
            raise Refused("attention dropout is active")
        if isinstance(mask, fx.Node) and self.env.get(mask) is not AUX:
            raise Refused("an attention mask that depends on the hidden states")
        q_val = node.args[0].meta.get("val")
        num_heads, head_dim = int(q_val.shape[1]), int(q_val.shape[-1])

        projections = [v for _, v in data]
        if not all(isinstance(v, PendingLinear) for v in projections):
            raise Refused("attention inputs that are not projections of one hidden state")
        qkv, sources = self._fused_qkv(module, projections)
        width = qkv[0].shape[0]
        num_kv_heads = (width // head_dim - num_heads) // 2
        if width != (num_heads + 2 * num_kv_heads) * head_dim or num_kv_heads < 1:
            raise Refused(f"q/k/v width {width} does not fit {num_heads} heads of {head_dim}")
        if self.arch.qkv_per_head:
            qkv = tuple(None if t is None else per_head_to_concatenated(t, num_heads, head_dim) for t in qkv)
        scale = node.kwargs.get("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)
        scale *= self._query_scaling(region, projections)
        rope_theta = self._rope_theta(region, head_dim)
        rot = rotary_dim(self.model.config, head_dim) if rope_theta else head_dim
        window = int(self.arch.sliding_window(self.model.config, module) or 0)
        # Left out where they are the defaults (rotary over whole heads, no window).
        extra = (rot if rot != head_dim else 0, window) if window else (rot,) if rot != head_dim else ()

        x = self._materialize(projections[0].x)
        qkv_name = self._name("qkv", region.path)
        w = self._param(f"{qkv_name}.weight", qkv[0])
        b = self._param(f"{qkv_name}.bias", qkv[1])
        qkv_path = sources[0] if len(sources) == 1 else region.path
        fused = self._emit(ops.affine, (x, w, b), "qkv", qkv_path, qkv_name)
        fused.meta["source_modules"] = sources
        core = self._emit(
            ops.attention,
            (fused, num_heads, num_kv_heads, head_dim, rope_theta, scale, self.arch.causal, *extra),
            "attention",
            region.path,
        )
        return Hidden(core)

    def _query_scaling(self, region: Region, projections: list[PendingLinear]) -> float:
        """The constant the attention multiplies its query projection by before sdpa (OPT's
        ``q_proj(x) * scaling``; 1.0 where there is none), folded into the attention's scale."""
        members = set(region.nodes)
        factor = 1.0
        query = self.arch.qkv_projections[0] if self.arch.qkv_projections else None
        for n in region.nodes:
            if n.target != aten.mul.Tensor or len(n.args) != 2:
                continue
            src, c = n.args
            value = self.env.get(src) if isinstance(src, fx.Node) and src not in members else None
            if not isinstance(value, PendingLinear):
                continue
            if not isinstance(c, (int, float)) or query is None or value.module is not getattr(region.module, query, None):
                raise Refused(f"a projection {value.path} scaled by something other than a constant on the query")
            factor *= float(c)
        return factor

    def _fused_qkv(self, module: nn.Module, projections: list[PendingLinear]):
        if len({id(p.x) for p in projections}) != 1:
            raise Refused("q, k and v are projections of different inputs")
        if len(projections) == 1:
            p = projections[0]
            return self.arch.linear_params(p.module), [p.path]
        attrs = self.arch.qkv_projections or ()
        by_name = {}
        for p in projections:
            for attr in attrs:
                if getattr(module, attr, None) is p.module:
                    by_name[attr] = p
        if len(projections) != 3 or len(by_name) != 3:
            separate = ", ".join(attrs[:-1]) + f" and {attrs[-1]}" if attrs else "separate q, k and v projections"
            raise Refused(f"expected one fused qkv projection or {separate}")
        parts = [by_name[a] for a in attrs]
        return self._concat_linear([p.module for p in parts]), [p.path for p in parts]

    def _rope_theta(self, region: Region, head_dim: int) -> float:
        """Rotary base if the attention region reads tables made by a rotary embedding module."""
        if self.arch.rotary_class is None or self.arch.rotary_base is None:
            return 0.0
        rotary_paths = set()
        for n in region.nodes:
            for i in n.all_input_nodes:
                info = innermost(i) if i.op == "call_function" else None
                if info and info[2].rsplit(".", 1)[-1] == self.arch.rotary_class:
                    rotary_paths.add(info[1])
        if not rotary_paths:
            return 0.0
        if len(rotary_paths) != 1:
            raise Refused("more than one rotary embedding feeds one attention")
        rotary = submodule(self.model, rotary_paths.pop())
        try:
            return self.arch.rotary_base(self.model.config, rotary, head_dim)
        except ValueError as e:
            raise Refused(str(e)) from None

    def _region_gated_mlp(self, region: Region, data) -> Any:
        compute = [n for n in region.nodes if n.target not in IGNORED_OPS]
        if len(compute) != 1 or compute[0].target != aten.mul.Tensor or len(data) != 2:
            ops_seen = ", ".join(op_name(n) for n in compute)
            raise Refused(f"expected act(gate) * up, found {ops_seen}")
        act = next((v for _, v in data if isinstance(v, PendingActivation)), None)
        up = next((v for _, v in data if isinstance(v, PendingLinear)), None)
        module = region.module
        if act is None or up is None or not isinstance(act.x, PendingLinear):
            raise Refused("expected act(gate_proj(x)) * up_proj(x)")
        gate = act.x
        if self.arch.gate_up_projections is None:
            raise Refused(f"{self.arch.model_class} names no gate and up projections")
        gate_attr, up_attr = self.arch.gate_up_projections
        if gate.module is not getattr(module, gate_attr, None) or up.module is not getattr(module, up_attr, None):
            raise Refused(f"the gate and up projections are not this MLP's {gate_attr} and {up_attr}")
        if gate.x is not up.x:
            raise Refused("gate and up projections of different inputs")
        x = self._materialize(gate.x)
        name = self._name("mlp_in", region.path)
        weight, bias = self._concat_linear([gate.module, up.module])
        w = self._param(f"{name}.weight", weight)
        b = self._param(f"{name}.bias", bias)
        fused = self._emit(ops.affine, (x, w, b), "mlp_in", region.path, name)
        fused.meta["source_modules"] = [gate.path, up.path]
        out = self._emit(ops.gated_activation, (fused, act.kind), "activation", act.path)
        return Hidden(out)

    # ------------------------------------------------------------ materialization

    def _materialize(self, value: Any, role: str | None = None) -> fx.Node:
        """The canonical node of ``value``, emitting a pending projection/activation/embedding."""
        if isinstance(value, Hidden):
            return value.node
        if getattr(value, "node", None) is not None:
            return value.node
        if isinstance(value, TokenEmbedding):
            w = self._param("embed.weight", value.weight)
            value.node = self._emit(ops.embedding, (self.input_ids, w, None), "embedding", value.path)
            return value.node
        if isinstance(value, PendingActivation):
            x = self._materialize(value.x, role="mlp_in")
            value.node = self._emit(ops.activation, (x, value.kind), "activation", value.path)
            return value.node
        if isinstance(value, PendingLinear):
            x = self._materialize(value.x)
            if role is None:
                producer = x.meta.get("role")
                role = {"attention": "attn_out", "activation": "mlp_out"}.get(producer)
                if role is None:
                    raise Refused(f"projection {value.path} after a {producer or 'non-canonical'} node, where spikec expects none")
            name = self._name(role, value.path)
            weight, bias = self.arch.linear_params(value.module)
            w = self._param(f"{name}.weight", weight)
            b = self._param(f"{name}.bias", bias)
            value.node = self._emit(ops.affine, (x, w, b), role, value.path, name)
            return value.node
        if isinstance(value, PositionEmbedding):
            raise Refused(f"position embedding {value.path} used other than added to the token embedding")
        raise Refused("the token ids used as a hidden state")

    def _emit(self, target, args: tuple, role: str, module_path: str, name: str | None = None) -> fx.Node:
        if name is None:
            name = self._name(role, module_path, args)
        node = self.graph.create_node("call_function", target, args, {}, name=name.replace(".", "_"))
        node.meta.update(spikec_name=name, role=role, module_path=module_path)
        return node

    def _param(self, name: str, tensor: torch.Tensor | None) -> fx.Node | None:
        """A get_attr on a clone of ``tensor`` (``tensor`` itself, made contiguous, with
        ``share_weights``), as attribute ``name`` with dots made underscores (flat, since names
        like ``h.0.mlp.in`` are no valid attribute paths)."""
        if tensor is None:
            return None
        target = name.replace(".", "_")
        if target in self.params:
            raise AssertionError(f"parameter {target} emitted twice")
        if tensor.is_meta:  # a placed model's weight read while offloaded (spikec.frontend.placement)
            raise RuntimeError(f"internal error: the weight of {name} was read while offloaded; please report this")
        t = tensor.detach().to(device="cpu", dtype=torch.float32)  # a placed model's weights may be on a GPU
        # shared only once: tied weights (embedding and lm_head) stay two tensors, as clones are
        shared = self.share_weights and t.untyped_storage().data_ptr() not in self.shared_storages
        t = t.contiguous() if shared else t.clone(memory_format=torch.contiguous_format)
        self.shared_storages.add(t.untyped_storage().data_ptr())
        self.params[target] = nn.Parameter(t, requires_grad=False)
        return self.graph.get_attr(target)

    def _name(self, role: str, module_path: str, args: tuple = ()) -> str:
        """Readable unique name: ``embed``, ``h.<i>.ln_1``, ``h.<i>.attn.qkv``, ..., ``ln_f``, ``lm_head``."""
        block = self.arch.block_index(module_path)
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

    def _concat_linear(self, modules: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row-wise concatenation of projections of one input (zero bias where one is missing)."""
        params = [self.arch.linear_params(m) for m in modules]
        weight = torch.cat([w for w, _ in params], dim=0)
        if all(b is None for _, b in params):
            return weight, None
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in params])
        return weight, bias

    # ------------------------------------------------------------ refusals

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
