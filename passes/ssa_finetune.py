"""``ssa-finetune``: surrogate-gradient fine-tuning of the SSA layers the ``ssa`` pass made.

Steps, in the order the pass runs them: find each SSA layer and its projections
(``_blocks``); record, over the calibration sequences, its input and the output softmax
attention gives on it (``_record``); make the trained leaf tensors (``_parameters``) and read
the layer's parameters from them (``_current``); train with ``passes.training.train`` on the
layer-wise loss (``block_loss``) and optionally end to end through the whole converted network
(``_Network``, a ``torch.fx.Interpreter``); write the trained values back to new attributes
(``_write_back``). docs/ssa.md describes the method, its options and measured figures.

It is one pass over 500 lines: the layer-wise and the end-to-end objectives share the block
records and the student's definition (``_current``, ``_student_ssa``), which another module
would have to import back as public names of this one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from tqdm import tqdm

from spikec.core import ops
from spikec.core import ssa as core_ssa
from spikec.core.errors import UnsupportedError, UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .fx_graph import attr_tensor, calls, drop_unused_attrs, erase_if_unused, get_arg, new_attr, set_arg, spikec_name
from .fx_graph import module_device
from .ssa import FIELDS, MIN_THRESHOLD, NODE_KEY, OPTIONAL_FIELDS, Probe, calibration_ids
from .training import TrainConfig, TrainResult, train

DECAY_UNIT = 0.05  # a decay's trained offset is in these units (one learning rate for all parameters)
MIN_DECAY = 1e-3
INPUTS = ("ann", "snn")  # where each layer's recorded input comes from (``finetune_inputs``)


@dataclass(frozen=True)
class SSAFinetuneOptions:
    """Options of the ``ssa-finetune`` pass (docs/ssa.md)."""

    steps: int = option_field("finetune_steps", 100, "layer-wise distillation steps")
    lr: float = option_field("finetune_lr", 1e-2, "learning rate (AdamW)")
    e2e_steps: int = option_field("finetune_e2e_steps", 0, "end-to-end steps after the layer-wise ones: 1 - cosine "
                                  "of the final hidden state (lm_head's input) to the unquantized model's", low=0)
    e2e_lr: float | None = option_field("finetune_e2e_lr", None, "learning rate of the end-to-end steps "
                                        "(None: finetune_lr / 10, the whole network amplifies every update)")
    batch: int = option_field("finetune_batch", 4, "sequences a step", low=1)
    samples: int = option_field("finetune_samples", 0, "calibration sequences used (0: all)", low=0)
    rank: int = option_field("finetune_rank", 8, "rank of the trained updates of the qkv and output projections "
                             "(0: projections frozen, only thresholds and scales train)", low=0)
    inputs: str = option_field("finetune_inputs", "ann", "each layer's input is recorded with softmax attention in "
                               "every layer (ann) or with the SSA layers in place (snn)", choices=INPUTS)
    surrogate: str = option_field("surrogate", "sigmoid", "surrogate gradient of the spikes",
                                  choices=tuple(core_ssa.SURROGATES))
    alpha: float | None = option_field("surrogate_alpha", None, "the surrogate's sharpness (None: its default)")
    checkpoint: str | None = option_field("finetune_checkpoint", None, "checkpoint file (None: no checkpoint)")
    checkpoint_every: int = option_field("finetune_checkpoint_every", 10, "steps between checkpoints")
    seed: int = option_field("finetune_seed", 0, "seed of the low-rank initialisation and the batch order")
    progress: bool = option_field("progress", True, "show a progress bar")

    def __post_init__(self) -> None:
        for name, value in (("surrogate_alpha", self.alpha), ("finetune_e2e_lr", self.e2e_lr)):
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be positive, got {value}")


@dataclass
class _Block:
    """One SSA layer, its projections and its recorded training data."""

    name: str
    node: fx.Node  # the spiking_self_attention call
    qkv: fx.Node  # producer of its input
    readout: fx.Node  # the output projection (rate_readout_affine)
    shape: dict[str, Any]
    settings: dict[str, Any]  # signed, tau, normalize, timesteps
    init: dict[str, torch.Tensor]  # FIELDS at the start
    w_o: torch.Tensor  # output projection on real values (thresholds unfolded)
    b_o: torch.Tensor | None
    teacher_w: torch.Tensor  # the projection before the ssa pass (the teacher's)
    teacher_b: torch.Tensor | None
    w_qkv: torch.Tensor | None  # qkv weight when a low-rank update may be trained
    x_in: list[torch.Tensor]  # qkv projection inputs [N, P, d_in] (rates), when w_qkv is set
    base: list[torch.Tensor]  # qkv currents [N, P, F]
    target: list[torch.Tensor]  # softmax attention block output [N, P, d_model]
    power: float = 1.0  # mean square of the target: the loss is relative to it


def _block(gm: fx.GraphModule, node: fx.Node, rank: int) -> _Block:
    """The block of SSA node ``node`` (no records yet); ``UnsupportedError`` when its output does
    not feed one rate-readout projection or its tensors are not attributes."""
    name = spikec_name(node)
    users = list(node.users)
    if len(users) != 1 or users[0].target is not ops.rate_readout_affine:
        raise UnsupportedError(f"{name}: ssa-finetune needs the SSA output to feed one rate-readout projection")
    readout = users[0]
    w = attr_tensor(gm, get_arg(readout, 1, "weight"))
    bias_node = get_arg(readout, 2, "bias")
    b = attr_tensor(gm, bias_node) if bias_node is not None else None
    init = {f: attr_tensor(gm, node.args[1 + i]) for i, f in enumerate(FIELDS)}
    for f in OPTIONAL_FIELDS:
        if node.kwargs.get(f) is not None:
            init[f] = attr_tensor(gm, node.kwargs[f])
    if w is None or any(v is None for v in init.values()):
        raise UnsupportedError(f"{name}: its thresholds and projection weight must be tensor attributes")
    qkv = node.args[0]
    w_qkv = None
    if (rank > 0 and isinstance(qkv, fx.Node) and qkv.target in (ops.affine, ops.rate_readout_affine)
            and len(qkv.users) == 1):
        w_qkv = attr_tensor(gm, get_arg(qkv, 1, "weight"))
    meta = node.meta.get(NODE_KEY, {})
    shape = {"num_heads": int(node.kwargs["num_heads"]), "num_kv_heads": int(node.kwargs["num_kv_heads"]),
             "head_dim": int(node.kwargs["head_dim"]), "rope_theta": float(node.kwargs["rope_theta"]),
             "attention_scale": meta.get("attention_scale")}
    settings = {k: node.kwargs[k] for k in ("signed", "tau", "normalize", "timesteps")}
    w_o = (w.double().cpu() / init["o_threshold"].double().cpu()[None, :]).float()
    b_o = None if b is None else b.detach().float().cpu()
    teacher = meta.get("teacher", {"weight": w_o, "bias": b_o})
    return _Block(
        name=name, node=node, qkv=qkv, readout=readout, shape=shape, settings=settings,
        init={k: v.detach().float().cpu().clone() for k, v in init.items()},
        w_o=w_o, b_o=b_o, teacher_w=teacher["weight"], teacher_b=teacher["bias"],
        w_qkv=None if w_qkv is None else w_qkv.detach().float().cpu(),
        x_in=[], base=[], target=[])


def _blocks(gm: fx.GraphModule, rank: int) -> list[_Block]:
    """One block per ``spiking_self_attention`` node of ``gm``, in graph order."""
    return [_block(gm, node, rank) for node in calls(gm, core_ssa.spiking_self_attention)]


def _recording_hooks(blocks: list[_Block], inputs: str) -> tuple[dict[fx.Node, Callable], dict[fx.Node, Callable]]:
    """``Probe``'s ``before`` and ``replace`` hooks of ``_record``: at each SSA node record its
    input and the teacher's output on it; at a qkv projection with a trainable update record its
    input rate; with ``inputs == "ann"`` stand the teacher's output in for the SSA block's."""
    pending: dict[str, torch.Tensor] = {}
    before: dict[fx.Node, Callable] = {}
    replace: dict[fx.Node, Callable] = {}
    for blk in blocks:
        def at_ssa(args: tuple, blk: _Block = blk) -> None:
            qkv = args[0].detach().float().cpu()
            y = _softmax_attention(blk, qkv)
            target = F.linear(y, blk.teacher_w, blk.teacher_b)
            blk.base.append(qkv)
            blk.target.append(target)
            pending[blk.name] = target

        before[blk.node] = at_ssa
        if blk.w_qkv is not None:
            def at_qkv(args: tuple, blk: _Block = blk) -> None:
                x = args[0]
                if blk.qkv.target is ops.rate_readout_affine:
                    x = x.sum(0, dtype=torch.float32) / x.shape[0]
                blk.x_in.append(x.detach().float().cpu())

            before[blk.qkv] = at_qkv
        if inputs == "ann":
            replace[blk.node] = lambda args: args[0]  # not computed: its only reader is replaced below
            replace[blk.readout] = lambda args, blk=blk: pending[blk.name].to(args[1].device)
    return before, replace


def _record(gm: fx.GraphModule, blocks: list[_Block], data: torch.Tensor, inputs: str, batch: int) -> None:
    """Fill each block's ``x_in``, ``base`` and ``target`` from a run over ``data``. With
    ``inputs == "ann"`` every SSA layer is replaced by softmax attention during the run."""
    probe = Probe(gm, *_recording_hooks(blocks, inputs))
    device = module_device(gm)
    with torch.no_grad():
        for start in tqdm(range(0, data.shape[0], batch), desc="ssa-finetune: recording", unit="batch",
                          disable=None, leave=False):
            probe.run(data[start:start + batch].to(device))
    for blk in blocks:  # one tensor each, indexed by sample
        blk.base, blk.target = [torch.cat(blk.base)], [torch.cat(blk.target)]
        blk.x_in = [torch.cat(blk.x_in)] if blk.x_in else []
        blk.power = max(float(blk.target[0].pow(2).mean()), 1e-30)


def _parameters(blocks: list[_Block], rank: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Leaf tensors to train (log thresholds, scale offsets, low-rank updates) and the unit of
    each offset (so that one learning rate suits parameters of very different magnitudes)."""
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    units: dict[str, float] = {}
    for blk in blocks:
        for f in ("q_threshold", "k_threshold", "v_threshold", "o_threshold"):
            params[f"{blk.name}.log_{f}"] = blk.init[f].clamp(min=MIN_THRESHOLD).log().requires_grad_()
        params[f"{blk.name}.scale_offset"] = torch.zeros_like(blk.init["scale"]).requires_grad_()
        units[f"{blk.name}.scale"] = float(blk.init["scale"].abs().mean()) or 1.0
        if "decay" in blk.init:
            params[f"{blk.name}.decay_offset"] = torch.zeros_like(blk.init["decay"]).requires_grad_()
        if "map_threshold" in blk.init:
            params[f"{blk.name}.log_map_threshold"] = blk.init["map_threshold"].log().requires_grad_()
            params[f"{blk.name}.map_bias"] = blk.init["map_bias"].clone().requires_grad_()
        params[f"{blk.name}.bias_offset"] = torch.zeros(blk.w_o.shape[0], requires_grad=True)
        units[f"{blk.name}.bias"] = math.sqrt(blk.power)
        if rank:
            d_out, d_in = blk.w_o.shape
            params[f"{blk.name}.out_a"] = (torch.randn(rank, d_in, generator=gen) / math.sqrt(d_in)).requires_grad_()
            params[f"{blk.name}.out_b"] = torch.zeros(d_out, rank, requires_grad=True)
            units[f"{blk.name}.out"] = float(blk.w_o.pow(2).mean().sqrt())
        if blk.w_qkv is not None:
            d_out, d_in = blk.w_qkv.shape
            params[f"{blk.name}.qkv_a"] = (torch.randn(rank, d_in, generator=gen) / math.sqrt(d_in)).requires_grad_()
            params[f"{blk.name}.qkv_b"] = torch.zeros(d_out, rank, requires_grad=True)
            units[f"{blk.name}.qkv"] = float(blk.w_qkv.pow(2).mean().sqrt())
    return params, units


def _current(blk: _Block, params: dict[str, torch.Tensor], units: dict[str, float],
             materialize: bool = True) -> dict[str, Any]:
    """The block's thresholds, scale, bias and projection updates from the trained parameters.
    The updates are full matrices (``delta_out``, ``delta_qkv``), or with ``materialize`` False
    their low-rank factors (``lora_out``, ``lora_qkv``: ``(a, b, unit)``, cheaper to apply)."""
    n = blk.name
    out: dict[str, Any] = {f: params[f"{n}.log_{f}"].exp()
                           for f in ("q_threshold", "k_threshold", "v_threshold", "o_threshold")}
    out["scale"] = blk.init["scale"] + params[f"{n}.scale_offset"] * units[f"{n}.scale"]
    bias = params[f"{n}.bias_offset"] * units[f"{n}.bias"]
    out["bias"] = bias if blk.b_o is None else blk.b_o + bias
    if f"{n}.decay_offset" in params:
        out["decay"] = (blk.init["decay"] + params[f"{n}.decay_offset"] * DECAY_UNIT).clamp(MIN_DECAY, 1.0)
    if f"{n}.log_map_threshold" in params:
        out["map_threshold"] = params[f"{n}.log_map_threshold"].exp()
        out["map_bias"] = params[f"{n}.map_bias"]
    for part in ("out", "qkv"):
        if f"{n}.{part}_a" in params:
            a, b, unit = params[f"{n}.{part}_a"], params[f"{n}.{part}_b"], units[f"{n}.{part}"]
            if materialize:
                out[f"delta_{part}"] = b @ a * unit
            else:
                out[f"lora_{part}"] = (a, b, unit)
    return out


def _optional(cur: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``ssa_forward`` for the optional fields in use."""
    return {f: cur[f] for f in OPTIONAL_FIELDS if f in cur}


def _low_rank(x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor, float] | None) -> torch.Tensor | float:
    """``x @ (b a * unit)^T`` without forming the matrix (0 when there is no update)."""
    if factors is None:
        return 0.0
    a, b, unit = factors
    return F.linear(F.linear(x, a), b) * unit


def _softmax_attention(blk: _Block, qkv: torch.Tensor) -> torch.Tensor:
    """The attention the SSA layer replaced, on ``qkv [b, P, F]`` -> ``[b, P, H*D]``."""
    s = blk.shape
    return ops.attention(qkv, s["num_heads"], s["num_kv_heads"], s["head_dim"], s["rope_theta"], s["attention_scale"])


def _student_ssa(blk: _Block, qkv: torch.Tensor, cur: dict[str, Any], cfg: SSAFinetuneOptions) -> torch.Tensor:
    """The SSA layer's output spikes ``[T, b, P, H*D]`` on ``qkv [b, P, F]`` with the current
    parameters ``cur`` (``_current``), differentiable through the surrogate."""
    s, st = blk.shape, blk.settings
    return core_ssa.ssa_forward(qkv, cur["q_threshold"], cur["k_threshold"], cur["v_threshold"], cur["scale"],
                                cur["o_threshold"], s["num_heads"], s["num_kv_heads"], s["head_dim"], s["rope_theta"],
                                int(st["timesteps"]), bool(st["signed"]), float(st["tau"]), bool(st["normalize"]),
                                cfg.surrogate, cfg.alpha, **_optional(cur))


def block_loss(blk: _Block, idx: torch.Tensor, params: dict[str, torch.Tensor], units: dict[str, float],
               cfg: SSAFinetuneOptions) -> torch.Tensor:
    """Relative squared error (a scalar) of the block's output (through its projection) against
    the softmax attention's on recorded samples ``idx``, with surrogate gradients through the T steps."""
    cur = _current(blk, params, units, materialize=False)
    qkv = blk.base[0][idx]
    if "lora_qkv" in cur:
        qkv = qkv + _low_rank(blk.x_in[0][idx], cur["lora_qkv"])
    spikes = _student_ssa(blk, qkv, cur, cfg)
    y = spikes.mean(0) * cur["o_threshold"]
    out = F.linear(y, blk.w_o, cur["bias"]) + _low_rank(y, cur.get("lora_out"))
    return (out - blk.target[0][idx]).pow(2).mean() / blk.power


def _batches(n: int, batch: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Sample indices of a step, from the step index alone (epochs of seeded permutations)."""
    batch = min(batch, n)
    per_epoch = n // batch

    def indices(step: int) -> torch.Tensor:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return perm[pos * batch:(pos + 1) * batch]

    return indices


def _write_ssa_args(gm: fx.GraphModule, blk: _Block, cur: dict[str, torch.Tensor], device: torch.device) -> list[Any]:
    """Point the SSA node's tensor arguments at new attributes holding ``cur``; returns the old ones."""
    graph = gm.graph
    old = list(blk.node.args[1:6])
    with graph.inserting_before(blk.node):
        for i, f in enumerate(FIELDS):
            value = cur[f].float().to(device)
            blk.node.update_arg(1 + i, graph.get_attr(new_attr(gm, f"{blk.name}.{f}_finetuned", value)))
        for f in OPTIONAL_FIELDS:
            if f in cur:
                old.append(blk.node.kwargs[f])
                value = cur[f].float().to(device)
                blk.node.update_kwarg(f, graph.get_attr(new_attr(gm, f"{blk.name}.{f}_finetuned", value)))
    return old


def _write_projections(gm: fx.GraphModule, blk: _Block, cur: dict[str, torch.Tensor], device: torch.device) -> list[Any]:
    """Point the output projection (weight with ``o_threshold`` folded in, bias) and, with a
    trained update, the qkv projection's weight at new attributes; returns the old arguments."""
    graph = gm.graph
    w_o = blk.w_o + cur["delta_out"] if "delta_out" in cur else blk.w_o
    folded = (w_o.double() * cur["o_threshold"].double()[None, :]).float().to(device)
    old = [get_arg(blk.readout, 1, "weight"), get_arg(blk.readout, 2, "bias")]
    name = spikec_name(blk.readout)
    with graph.inserting_before(blk.readout):
        set_arg(blk.readout, 1, "weight", graph.get_attr(new_attr(gm, f"{name}.weight_finetuned", folded)))
        set_arg(blk.readout, 2, "bias",
                graph.get_attr(new_attr(gm, f"{name}.bias_finetuned", cur["bias"].float().to(device))))
    if "delta_qkv" in cur:
        old.append(get_arg(blk.qkv, 1, "weight"))
        w = (blk.w_qkv.double() + cur["delta_qkv"].double()).float().to(device)
        with graph.inserting_before(blk.qkv):
            set_arg(blk.qkv, 1, "weight", graph.get_attr(new_attr(gm, f"{spikec_name(blk.qkv)}.weight_finetuned", w)))
    return old


def _write_back(gm: fx.GraphModule, blocks: list[_Block], params: dict[str, torch.Tensor],
                units: dict[str, float]) -> None:
    """Point each SSA node and its projections at new attributes holding the trained values."""
    stale: set[str] = set()
    device = module_device(gm)
    with torch.no_grad():
        for blk in blocks:
            cur = {k: v.detach() for k, v in _current(blk, params, units).items()}
            old = _write_ssa_args(gm, blk, cur, device) + _write_projections(gm, blk, cur, device)
            stale |= erase_if_unused(gm, old)
    drop_unused_attrs(gm, stale)
    gm.graph.lint()
    gm.recompile()


def _mean_loss(blocks: list[_Block], n: int, batch: int, params: dict[str, torch.Tensor], units: dict[str, float],
               cfg: SSAFinetuneOptions) -> list[float]:
    """Each block's loss over all recorded samples (no gradient)."""
    out = []
    with torch.no_grad():
        for blk in blocks:
            total = 0.0
            for start in range(0, n, batch):
                idx = torch.arange(start, min(start + batch, n))
                total += float(block_loss(blk, idx, params, units, cfg)) * len(idx)
            out.append(total / n)
    return out


def _hidden_node(gm: fx.GraphModule) -> fx.Node:
    """The node whose value is lm_head's real input (the final hidden state)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.meta.get("role") == "lm_head":
            x = get_arg(node, 0, "x" if node.target is ops.affine else "spikes")
            return get_arg(x, 0, "x") if x.target is ops.signed_if else x
    raise UnsupportedError("the graph has no lm_head: end-to-end fine-tuning needs the final hidden state")


def _call_arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, at position ``i`` or by keyword."""
    return args[i] if len(args) > i else kwargs.get(name, default)


class _Network(fx.Interpreter):
    """Runs the converted graph differentiably and keeps the final hidden state (``hidden``).

    As the student: SSA layers with the trained parameters (surrogate gradients over the T
    steps), SignedIF neurons as the rate quantizer they implement with straight-through
    gradients (``clamp(floor(T x / theta + v_init)) / T``; the iterative neuron differs from it
    only at exact float ties). As the teacher: the unquantized model (neurons pass their input,
    SSA layers are softmax attention with their original projection). Every other node runs as
    ``torch.fx.Interpreter`` runs it."""

    def __init__(self, gm: fx.GraphModule, blocks: list[_Block], hidden: fx.Node, teacher: bool,
                 current: dict[str, dict[str, torch.Tensor]] | None = None, cfg: SSAFinetuneOptions | None = None):
        super().__init__(gm, garbage_collect_values=True)
        self.ssa = {b.node: b for b in blocks}
        self.readout = {b.readout: b for b in blocks}
        self.qkv = {b.qkv: b for b in blocks}
        self.hidden_node, self.teacher, self.current, self.cfg = hidden, teacher, current or {}, cfg
        self.hidden: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        value = self._replaced(n)
        if value is None:
            value = super().run_node(n)
        if n is self.hidden_node:
            self.hidden = value
        return value

    def _replaced(self, n: fx.Node) -> Any:
        """The value of ``n`` where this network differs from the graph, else None."""
        if n.op != "call_function":
            return None
        if n.target is ops.signed_if:
            return self._signed_if(*self.fetch_args_kwargs_from_env(n))
        if n in self.ssa:
            return self._ssa(self.ssa[n], self.fetch_args_kwargs_from_env(n)[0][0])
        if n.target is ops.rate_readout_affine:
            if n in self.readout:
                return self._projection(self.readout[n], self.fetch_args_kwargs_from_env(n)[0][0])
            source = n.args[0]
            if isinstance(source, fx.Node) and source.target is ops.signed_if:
                return self._rate_affine(n, *self.fetch_args_kwargs_from_env(n))
        return None

    def _signed_if(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The neuron's input over its threshold (teacher), or its rate with straight-through gradients."""
        u = args[0].float() / _call_arg(args, kwargs, 1, "threshold").float()
        if self.teacher:
            return u
        steps, b = _call_arg(args, kwargs, 2, "timesteps"), _call_arg(args, kwargs, 3, "max_spikes", 1)
        signed, v_init = _call_arg(args, kwargs, 4, "signed", True), _call_arg(args, kwargs, 5, "v_init", 0.5)
        q = torch.clamp(torch.floor(steps * u + v_init), -b * steps if signed else 0, b * steps) / steps
        return u + (q - u).detach()

    def _ssa(self, blk: _Block, qkv: torch.Tensor) -> torch.Tensor:
        """Softmax attention (teacher) or the SSA layer with the trained parameters."""
        if self.teacher:
            return _softmax_attention(blk, qkv)
        return _student_ssa(blk, qkv, self.current[blk.name], self.cfg)

    def _projection(self, blk: _Block, x: torch.Tensor) -> torch.Tensor:
        """The SSA layer's output projection: the original one on the attention (teacher), or the
        trained one on ``o_threshold * mean_t`` of the spikes."""
        if self.teacher:
            return F.linear(x, blk.teacher_w.to(x.device), blk.teacher_b)
        cur = self.current[blk.name]
        w_o = blk.w_o + cur["delta_out"] if "delta_out" in cur else blk.w_o
        return F.linear(x.mean(0) * cur["o_threshold"], w_o, cur["bias"])

    def _rate_affine(self, n: fx.Node, args: tuple, kwargs: dict) -> torch.Tensor:
        """A rate readout of a SignedIF (whose value here is already the rate): an affine, with the
        trained low-rank update when it is an SSA layer's qkv projection."""
        x, w, b = args[0], _call_arg(args, kwargs, 1, "weight"), _call_arg(args, kwargs, 2, "bias")
        if n in self.qkv and not self.teacher and "delta_qkv" in self.current[self.qkv[n].name]:
            w = w + self.current[self.qkv[n].name]["delta_qkv"]
        return F.linear(x, w.float(), None if b is None else b.float())


def _run_network(gm: fx.GraphModule, blocks: list[_Block], hidden: fx.Node, ids: torch.Tensor,
                 cfg: SSAFinetuneOptions, params: dict[str, torch.Tensor] | None = None,
                 units: dict[str, float] | None = None) -> torch.Tensor:
    """The final hidden state of the student (given ``params``) or the teacher on ``ids``."""
    current = None if params is None else {b.name: _current(b, params, units) for b in blocks}
    net = _Network(gm, blocks, hidden, teacher=params is None, current=current, cfg=cfg)
    net.run(ids)
    return net.hidden


def _fingerprint(blocks: list[_Block], cfg: SSAFinetuneOptions, n: int) -> str:
    """What a checkpoint must have been made with, beside the trained tensors (``training.train``)."""
    h = hashlib.sha256()
    for blk in blocks:
        h.update(f"{blk.name}:{blk.shape}:{blk.settings};".encode())
        h.update(blk.target[0][:1].numpy().tobytes())
        h.update(blk.init["o_threshold"].numpy().tobytes())
    keys = ("batch", "samples", "rank", "inputs", "surrogate", "alpha", "steps")
    h.update(repr([(k, getattr(cfg, k)) for k in keys] + [n]).encode())
    return h.hexdigest()[:16]


def _loss_function(gm: fx.GraphModule, blocks: list[_Block], data: torch.Tensor, params: dict[str, torch.Tensor],
                   units: dict[str, float], cfg: SSAFinetuneOptions) -> Callable[[int], torch.Tensor]:
    """Step -> its loss (already back-propagated): layer-wise for the first ``cfg.steps`` steps,
    then end to end (``1 - cosine`` of the final hidden state to the teacher's)."""
    n = int(data.shape[0])
    indices = _batches(n, cfg.batch, cfg.seed)
    hidden = _hidden_node(gm) if cfg.e2e_steps else None
    device = module_device(gm)
    teacher_hidden = None
    if hidden is not None:
        with torch.no_grad():
            teacher_hidden = torch.cat([_run_network(gm, blocks, hidden, data[i:i + cfg.batch].to(device), cfg)
                                        for i in range(0, n, cfg.batch)])

    def layer_loss(idx: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        for blk in blocks:  # backward per block: one block's graph over T steps is alive at a time
            loss = block_loss(blk, idx, params, units, cfg) / len(blocks)
            loss.backward()
            total += loss.detach()
        return total

    def e2e_loss(idx: torch.Tensor) -> torch.Tensor:
        student = _run_network(gm, blocks, hidden, data[idx].to(device), cfg, params, units)
        loss = 1 - F.cosine_similarity(student.float(), teacher_hidden[idx].to(student.device), dim=-1).mean()
        loss.backward()
        return loss.detach()

    def loss_fn(step: int) -> torch.Tensor:
        return layer_loss(indices(step)) if step < cfg.steps else e2e_loss(indices(step))

    return loss_fn


def _record_stats(ctx: PassContext, cfg: SSAFinetuneOptions, train_cfg: TrainConfig, result: TrainResult,
                  blocks: list[_Block], data: torch.Tensor, params: dict[str, torch.Tensor],
                  before: list[float], after: list[float]) -> None:
    """The pass's statistics (report.json)."""
    n = int(data.shape[0])
    if cfg.e2e_steps:
        ctx.record("e2e_steps", cfg.e2e_steps)
        ctx.record("e2e_lr", train_cfg.lr_at(cfg.steps))
        ctx.record("e2e_losses", [round(x, 6) for x in result.losses[cfg.steps:]])
    for key, value in (("layers", len(blocks)), ("steps", cfg.steps), ("resumed_from", result.resumed_from),
                       ("lr", cfg.lr), ("batch", min(cfg.batch, n)), ("samples", n),
                       ("positions", int(data.shape[1])), ("rank", cfg.rank), ("inputs", cfg.inputs),
                       ("surrogate", cfg.surrogate),
                       ("trained_parameters", int(sum(p.numel() for p in params.values()))),
                       ("loss_before", sum(before) / len(before)), ("loss_after", sum(after) / len(after))):
        ctx.record(key, value)
    ctx.record("loss_per_layer", {b.name: [round(x, 6), round(y, 6)] for b, x, y in zip(blocks, before, after)})
    ctx.record("train_losses", [round(x, 6) for x in result.losses[:: max(1, len(result.losses) // 50)]])


def ssa_finetune(gm: fx.GraphModule, ctx: PassContext) -> None:
    """Fine-tune the SSA layers with surrogate-gradient BPTT, layer by layer, against softmax attention.

    Matches every ``core.ssa.spiking_self_attention`` node (``ssa`` must have run). Records,
    over the calibration samples, each SSA layer's input (see ``SSAFinetuneOptions.inputs``) and
    the output the original softmax attention and projection give on it, then minimises the
    mean over layers of the relative squared error of the SSA block's output (its output
    projection applied to ``o_threshold * mean_t(O_t)``), with gradients through the spikes
    over the T steps (surrogate ``surrogate``). Trained: per-channel Q/K/V/output thresholds
    (in log space), per-channel scales, the output projection's bias and, with
    ``finetune_rank`` r > 0, rank-r updates of the qkv and output projection weights;
    everything else is frozen. The loop is
    ``passes.training.train`` (AdamW, progress bar, checkpoint/resume at
    ``finetune_checkpoint``). Guarantees: the graph keeps its structure; trained values are
    written to new attributes (no existing tensor is modified).
    """
    cfg = from_options(SSAFinetuneOptions, ctx.options)
    blocks = _blocks(gm, cfg.rank)
    if not blocks:
        raise UsageError("ssa-finetune found no SSA layer", "run the ssa pass before ssa-finetune")
    data = calibration_ids(ctx, cfg.samples, "ssa-finetune")
    start = time.perf_counter()
    _record(gm, blocks, data, cfg.inputs, int(ctx.option("calibration_batch", 4)))
    recorded = time.perf_counter() - start
    n = int(data.shape[0])
    params, units = _parameters(blocks, cfg.rank, cfg.seed)
    loss_fn = _loss_function(gm, blocks, data, params, units, cfg)
    before = _mean_loss(blocks, n, cfg.batch, params, units, cfg)
    train_cfg = TrainConfig(steps=cfg.steps + cfg.e2e_steps, lr=cfg.lr, checkpoint=cfg.checkpoint,
                            checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, desc="ssa-finetune",
                            progress=cfg.progress, backward_in_loss=True,
                            lr_from=((cfg.steps, cfg.lr / 10 if cfg.e2e_lr is None else cfg.e2e_lr),)
                            if cfg.e2e_steps else ())
    result = train(params, loss_fn, train_cfg, extra_fingerprint=_fingerprint(blocks, cfg, n))
    after = _mean_loss(blocks, n, cfg.batch, params, units, cfg)
    _write_back(gm, blocks, params, units)
    _record_stats(ctx, cfg, train_cfg, result, blocks, data, params, before, after)
    ctx.record("record_seconds", recorded)
    ctx.record("seconds", time.perf_counter() - start)
