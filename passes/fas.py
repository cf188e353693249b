"""FAS, fast ANN-to-SNN conversion (Chen et al., arXiv 2502.04405), as two passes.

* ``qcfs-finetune`` (stage 1; after ``calibrate`` and the outlier passes, before
  ``spike-encode``): full-parameter fine-tuning with every calibrated affine input
  replaced by the quantizer its SignedIF neurons will implement at the compile's T
  (QCFS: clip-floor-shift with ``L = B*T`` levels per sign, shift ``v_init = 1/2``),
  straight-through gradients for the floor, and one learnable clip threshold
  multiplier per layer. Loss: KL divergence to the unquantized model's logits
  (distillation, so the model does not drift towards the calibration text), optionally
  plus the language-model loss. The weights are written back and the learned
  multipliers go into ``meta["spikec_neuron"]["range_scale"]``, where ``spike-encode``
  reads its thresholds.
* ``fas-calibrate`` (stage 2; after ``spike-encode``): coarse-to-fine calibration of the
  neurons, layer by layer in graph order: ``coarse`` finds one threshold multiplier per
  layer (grid search), ``fine`` then learns per-neuron thresholds and initial membrane
  potentials, each minimising the MSE between the layer's spiking output (mean over T,
  through the neuron model with straight-through gradients; the neurons' inputs come
  from the spiking network calibrated so far) and the unquantized layer output of the
  same weights; optionally a final joint step minimises the KL divergence of the logits.
  Thresholds are re-folded into the readout weights.

Both passes run on CPU in minutes for a 135M model and keep their state in files
(``training.train`` checkpoints, per-layer progress, the finished result), keyed by a
fingerprint of the weights, the calibration tokens and the options, so an interrupted
compile resumes and a repeated one reuses the result. docs/fas.md has the details.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from tqdm import tqdm

from spikec.core import ops
from spikec.core.errors import InputError, UsageError
from spikec.core.passes import PassContext, register_pass

from ._fx import (
    attr_tensor,
    calls,
    drop_unused_attrs,
    erase_if_unused,
    fetch_attr,
    get_arg,
    new_attr,
    set_arg,
    spikec_name,
)
from .calibrate import META_KEY as CALIBRATION_KEY
from .encode import NEURON_KEY, V_INIT, neuron_config, provably_nonnegative, thresholds
from .training import TrainConfig, save_state, train

FAS_KEY = "spikec_fas"  # neuron meta written by fas-calibrate
REFERENCE_KEY = "spikec_fas_reference"  # gm.meta: the weights before qcfs-finetune, fas-calibrate's target
LOSSES = ("kl", "lm", "kl+lm")
CALIBRATE_MODES = ("coarse", "fine")
FINE_PARAMS = {"both": ("threshold", "v_init"), "threshold": ("threshold",), "v_init": ("v_init",)}
COARSE_GRID = (0.25, 2.0, 13)  # multipliers geomspace(lo, hi, n), then a finer grid around the best


# ---------------------------------------------------------------------------
# The quantizer and running a graph with it
# ---------------------------------------------------------------------------


class _FloorSTE(torch.autograd.Function):
    """``floor`` with the identity as its gradient (straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def qcfs(x: torch.Tensor, theta: torch.Tensor, timesteps: int, max_spikes: int, signed: bool,
         v_init: float | torch.Tensor = V_INIT) -> torch.Tensor:
    """The SignedIF rate quantizer (``neurons.signed_if_rate``) with straight-through gradients.

    x: ``[..., F]`` current; theta ``[F]`` (or scalar) thresholds; v_init float or ``[F]``.
    Returns ``theta/T * clip(floor(T x / theta + v_init), -B T, B T)`` (lower bound 0
    when not signed) in the units of ``x``: the mean over T steps of what constant-current
    SignedIF neurons emit (up to float rounding). Gradients: d/dx 1 inside the range,
    0 outside; d/dtheta and d/dv_init those of the expression with floor taken as identity
    (LSQ's step-size gradient)."""
    count = _FloorSTE.apply(x * (timesteps / theta) + v_init)
    count = torch.clamp(count, -max_spikes * timesteps if signed else 0, max_spikes * timesteps)
    return count * (theta / timesteps)


def _execute(gm: fx.GraphModule, ids: torch.Tensor, attr: Callable[[str], Any],
             call: Callable[[fx.Node, tuple, dict], Any]) -> Any:
    """Run ``gm`` node by node: ``attr(target)`` gives get_attr values, ``call(node, args,
    kwargs)`` computes each call_function node; values are freed after their last use."""
    env: dict[fx.Node, Any] = {}
    left = {n: len(n.users) for n in gm.graph.nodes}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = ids
        elif node.op == "get_attr":
            env[node] = attr(node.target)
        elif node.op == "call_function":
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            env[node] = call(node, args, kwargs)
        elif node.op == "output":
            return fx.node.map_arg(node.args[0], lambda n: env[n])
        else:
            raise UsageError(f"FAS cannot run fx node kind {node.op!r} ({node.name})")
        for inp in node.all_input_nodes:
            left[inp] -= 1
            if left[inp] == 0:
                env.pop(inp, None)
    raise UsageError("the graph has no output node")


# ---------------------------------------------------------------------------
# Shared helpers: data, state files, fingerprints
# ---------------------------------------------------------------------------


def _device(gm: fx.GraphModule) -> torch.device:
    for t in gm.buffers():
        return t.device
    for t in gm.parameters():
        return t.device
    return torch.device("cpu")


def _sequences(ctx: PassContext, seq_len: int, what: str) -> torch.Tensor:
    """Calibration ids cut into ``[n, seq_len]`` sequences."""
    data = ctx.calibration
    if data is None or data.numel() == 0:
        raise InputError(f"{what} needs calibration text (token ids [samples, positions])",
                         hint="give calibration text (--calib-text), or drop the pass")
    if data.dim() != 2:
        raise InputError(f"calibration token ids must be [samples, positions], got shape {list(data.shape)}")
    if not 2 <= seq_len <= data.shape[1]:
        raise UsageError(f"{what}: sequence length {seq_len} must be between 2 and the calibration samples' "
                         f"{data.shape[1]} positions", hint="lower the seq_len option or raise --seq-len")
    per = data.shape[1] // seq_len
    return data[:, : per * seq_len].reshape(-1, seq_len)


def _positive_int(ctx: PassContext, name: str, default: int, low: int = 1) -> int:
    value = ctx.option(name, default)
    if int(value) != value or int(value) < low:
        raise UsageError(f"option {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _positive_float(ctx: PassContext, name: str, default: float) -> float:
    value = float(ctx.option(name, default))
    if not value > 0:
        raise UsageError(f"option {name} must be positive, got {value!r}")
    return value


def _fingerprint(tensors: list[torch.Tensor], ids: torch.Tensor, settings: dict[str, Any]) -> str:
    """A content hash of the tensors, the token ids and the settings (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(sorted(settings.items())).encode())
    for t in [ids, *tensors]:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _state_dir(ctx: PassContext) -> Path:
    """``fas_state_dir``, by default ``$XDG_CACHE_HOME/spikec/fas`` (``~/.cache/spikec/fas``)."""
    chosen = ctx.option("fas_state_dir")
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikec" / "fas"


def _load(path: Path, run_id: str) -> dict | None:
    """A state file of this run, or None (missing, unreadable or another run's)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):  # truncated: start afresh
        return None
    return state if isinstance(state, dict) and state.get("run_id") == run_id else None


def _replace_attr(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> None:
    """Point the attribute ``target`` at ``tensor`` (the old tensor is left untouched)."""
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    delattr(owner, name)
    owner.register_buffer(name, tensor.detach())


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher) || softmax(student)), logits ``[..., V]``."""
    s = F.log_softmax(student.float().reshape(-1, student.shape[-1]), -1)
    t = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


# ---------------------------------------------------------------------------
# Stage 1: qcfs-finetune
# ---------------------------------------------------------------------------


def _quantized_affines(gm: fx.GraphModule, ctx: PassContext) -> list[tuple[fx.Node, dict, torch.Tensor, bool]]:
    """(affine, neuron config, thresholds spike-encode would use, signed) per calibrated affine."""
    out = []
    for affine in calls(gm, ops.affine):
        if CALIBRATION_KEY in affine.meta:
            cfg = neuron_config(affine, ctx)
            theta = thresholds(affine.meta[CALIBRATION_KEY], cfg)
            out.append((affine, cfg, theta, not provably_nonnegative(get_arg(affine, 0, "x"))))
    return out


@register_pass("qcfs-finetune")
def qcfs_finetune(gm: fx.GraphModule, ctx: PassContext) -> None:
    """FAS stage 1: fine-tune all weights with QCFS-quantized affine inputs and learnable clip thresholds.

    Matches every ``ops.affine`` with calibration statistics (run after ``calibrate`` and
    the outlier passes, before ``spike-encode``). During training each such affine reads
    ``qcfs(x, s_l * theta)``: the rate its SignedIF neurons will produce at
    ``ctx.timesteps`` (theta, B, signed exactly as ``spike-encode`` chooses them), with a
    learnable multiplier ``s_l`` per layer (initially 1). Options: ``qcfs_steps`` (100),
    ``qcfs_lr`` (1e-5, AdamW), ``qcfs_threshold_lr`` (1e-2, the multipliers' step in log
    units), ``qcfs_seq_len`` (64), ``qcfs_batch`` (4), ``qcfs_loss`` (``kl`` | ``lm`` |
    ``kl+lm``; KL to the unquantized model's logits), ``qcfs_params`` (``all`` |
    ``thresholds``), ``qcfs_checkpoint`` (file; default in ``fas_state_dir``),
    ``qcfs_checkpoint_every`` (10), ``qcfs_reuse`` (False; True keeps the finished result in
    ``fas_state_dir`` and reuses it for an identical run),
    ``qcfs_seed`` (0). Batches come from ``ctx.calibration`` cut into sequences.
    Guarantees: trained weights replace the attributes (old tensors are not modified);
    ``meta["spikec_neuron"]["range_scale"]`` becomes ``range_scale * s_l``, so that
    ``spike-encode`` converts with the learned thresholds; an interrupted run resumes
    from its checkpoint and ends where an uninterrupted one ends.
    """
    start = time.perf_counter()
    if any(True for _ in calls(gm, ops.signed_if)):
        raise UsageError("qcfs-finetune must run before spike-encode", hint="order: calibrate, qcfs-finetune, spike-encode")
    sites = _quantized_affines(gm, ctx)
    if not sites:
        raise UsageError("qcfs-finetune found no calibrated affine", hint="run the calibrate pass before qcfs-finetune")
    T = ctx.timesteps
    steps = _positive_int(ctx, "qcfs_steps", 100, low=0)
    lr = _positive_float(ctx, "qcfs_lr", 1e-5)
    threshold_lr = _positive_float(ctx, "qcfs_threshold_lr", 1e-2)
    seq_len = _positive_int(ctx, "qcfs_seq_len", 64, low=2)
    batch = _positive_int(ctx, "qcfs_batch", 4)
    loss_kind = str(ctx.option("qcfs_loss", "kl"))
    which = str(ctx.option("qcfs_params", "all"))
    seed = _positive_int(ctx, "qcfs_seed", 0, low=0)
    if loss_kind not in LOSSES:
        raise UsageError(f"unknown qcfs_loss {loss_kind!r}; choose one of {', '.join(LOSSES)}")
    if which not in ("all", "thresholds"):
        raise UsageError(f"unknown qcfs_params {which!r}; choose all or thresholds")
    device = _device(gm)
    data = _sequences(ctx, seq_len, "qcfs-finetune").to(device)
    n = data.shape[0]

    # Trainable clones of the floating tensors (tied attributes share one clone).
    targets = sorted({node.target for node in gm.graph.nodes if node.op == "get_attr"})
    originals = {t: fetch_attr(gm, t) for t in targets}
    clones: dict[int, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}  # attribute target -> leaf
    params: dict[str, torch.Tensor] = {}  # unique leaves by first target
    if which == "all":
        for t in targets:
            value = originals[t]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if id(value) not in clones:
                    clones[id(value)] = value.detach().clone().requires_grad_(True)
                    params[t] = clones[id(value)]
                leaves[t] = clones[id(value)]
    # log multipliers, scaled so that AdamW's step of ~lr moves them by ~threshold_lr
    gain = threshold_lr / lr
    log_scale = torch.zeros(len(sites), device=device, requires_grad=True)
    params["qcfs.log_threshold_scale"] = log_scale
    site_of = {affine: i for i, (affine, *_rest) in enumerate(sites)}

    def student(ids: torch.Tensor) -> torch.Tensor:
        scales = torch.exp(gain * log_scale)

        def call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
            i = site_of.get(node)
            if i is not None:
                _, cfg, theta, signed = sites[i]
                quantize = lambda x: qcfs(x, theta.to(device) * scales[i], T, cfg["max_spikes"], signed)
                if args:
                    args = (quantize(args[0]), *args[1:])
                else:
                    kwargs = {**kwargs, "x": quantize(kwargs["x"])}
            return node.target(*args, **kwargs)

        return _execute(gm, ids, lambda t: leaves.get(t, originals[t]), call)

    settings = {"timesteps": T, "steps": steps, "lr": lr, "threshold_lr": threshold_lr, "seq_len": seq_len,
                "batch": batch, "loss": loss_kind, "params": which, "seed": seed,
                "sites": [(spikec_name(a), c["max_spikes"], s) for a, c, _, s in sites]}
    run_id = _fingerprint([originals[t] for t in targets if isinstance(originals[t], torch.Tensor)]
                          + [theta for _, _, theta, _ in sites], data, settings)
    ckpt = Path(ctx.option("qcfs_checkpoint") or _state_dir(ctx) / f"qcfs-{run_id}.ckpt").expanduser()
    done_file = _state_dir(ctx) / f"qcfs-{run_id}.done"
    reuse = bool(ctx.option("qcfs_reuse", False))
    done = _load(done_file, run_id) if reuse else None
    if done is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(done["params"][name])
        losses, resumed_from = list(done["losses"]), -1
    else:
        # Teacher logits of the unquantized model (float16 cache while it fits in memory).
        cache: dict[int, torch.Tensor] = {}
        vocab = None
        budget = float(ctx.option("qcfs_teacher_cache_mb", 2048)) * 2**20

        def teacher(idx: list[int]) -> torch.Tensor:
            nonlocal vocab
            missing = [i for i in idx if i not in cache]
            if missing:
                with torch.no_grad():
                    logits = gm(data[missing]).float()
                vocab = logits.shape[-1]
                if n * seq_len * vocab * 2 <= budget:
                    cache.update({i: logits[j].to(torch.float16) for j, i in enumerate(missing)})
                else:
                    return logits
            return torch.stack([cache[i] for i in idx]).float()

        perms: dict[int, torch.Tensor] = {}

        def batch_of(step: int) -> list[int]:
            out = []
            for j in range(batch):
                epoch, pos = divmod(step * batch + j, n)
                if epoch not in perms:
                    perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
                out.append(int(perms[epoch][pos]))
            return out

        def loss_fn(step: int) -> torch.Tensor:
            idx = batch_of(step)
            ids = data[idx]
            logits = student(ids)
            loss = logits.new_zeros(())
            if "kl" in loss_kind:
                loss = loss + _kl(logits, teacher(idx))
            if "lm" in loss_kind:
                loss = loss + F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                              ids[:, 1:].reshape(-1))
            return loss

        cfg = TrainConfig(steps=steps, lr=lr, weight_decay=0.0, grad_clip=None, checkpoint=str(ckpt),
                          checkpoint_every=_positive_int(ctx, "qcfs_checkpoint_every", 10), seed=seed,
                          desc="qcfs-finetune", progress=bool(ctx.option("progress", True)))
        result = train(params, loss_fn, cfg, extra_fingerprint=run_id)
        losses, resumed_from = result.losses, result.resumed_from
        if reuse:
            save_state(done_file, {"run_id": run_id, "losses": losses,
                              "params": {k: p.detach().cpu() for k, p in params.items()}})

    # fas-calibrate's target is the network before fine-tuning: keep its weights (no copy).
    if leaves and REFERENCE_KEY not in gm.meta:
        gm.meta[REFERENCE_KEY] = {
            "attrs": {t: originals[t] for t in leaves},
            "affines": {spikec_name(a): (attr_tensor(gm, get_arg(a, 1, "weight")), attr_tensor(gm, get_arg(a, 2, "bias")))
                        for a, *_rest in sites},
        }
    # Write back: new tensors for the weights, learned multipliers into the neuron configs.
    with torch.no_grad():
        for t, leaf in leaves.items():
            _replace_attr(gm, t, leaf.detach().clone().requires_grad_(False))
        scales = torch.exp(gain * log_scale).cpu()
    for i, (affine, cfg, _, _) in enumerate(sites):
        affine.meta[NEURON_KEY] = {**affine.meta.get(NEURON_KEY, {}),
                                   "range_scale": float(cfg["range_scale"]) * float(scales[i])}
    ctx.record("run_id", run_id)
    ctx.record("checkpoint", str(ckpt))
    ctx.record("reused_finished_run", done is not None)
    ctx.record("resumed_from", max(resumed_from, 0))
    ctx.record("steps", steps)
    ctx.record("sequences", n)
    ctx.record("seq_len", seq_len)
    ctx.record("loss", loss_kind)
    ctx.record("params", which)
    ctx.record("trainable_tensors", len(params))
    k = max(1, min(8, len(losses) // 4))  # batches differ: average a few steps at each end
    ctx.record("loss_before", sum(losses[:k]) / k if losses else None)
    ctx.record("loss_after", sum(losses[-k:]) / k if losses else None)
    ctx.record("losses", [round(v, 6) for v in losses])
    ctx.record("threshold_scale_min", float(scales.min()))
    ctx.record("threshold_scale_max", float(scales.max()))
    ctx.record("seconds", time.perf_counter() - start)


# ---------------------------------------------------------------------------
# Stage 2: fas-calibrate
# ---------------------------------------------------------------------------


class _Layer:
    """One SignedIF node and the readout affines it drives, with its calibration state."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node):
        self.node = node
        self.name = spikec_name(node)
        self.x = get_arg(node, 0, "x")
        self.theta0 = attr_tensor(gm, get_arg(node, 1, "threshold")).float()
        self.timesteps = int(get_arg(node, 2, "timesteps"))
        self.max_spikes = int(get_arg(node, 3, "max_spikes", 1))
        self.signed = bool(get_arg(node, 4, "signed", True))
        v_init = get_arg(node, 5, "v_init", V_INIT)
        self.v_init0 = attr_tensor(gm, v_init) if isinstance(v_init, fx.Node) else float(v_init)
        self.readouts = list(node.users)
        # results: thresholds [F] and v_init (float or [F]); the layer errors before/after
        # (validation tokens) and fit_before/fit_after (fitting tokens)
        self.theta: torch.Tensor = self.theta0
        self.v_init: float | torch.Tensor = self.v_init0
        self.before = self.after = self.fit_before = self.fit_after = float("nan")

    def quantize(self, x: torch.Tensor, theta: torch.Tensor | None = None,
                 v_init: float | torch.Tensor | None = None) -> torch.Tensor:
        return qcfs(x, self.theta if theta is None else theta, self.timesteps, self.max_spikes, self.signed,
                    self.v_init if v_init is None else v_init)


_ERRORS = ("before", "after", "fit_before", "fit_after")


def _layers(gm: fx.GraphModule) -> list[_Layer]:
    """SignedIF nodes driven by a real current whose every user is a readout affine reading them."""
    out = []
    for node in calls(gm, ops.signed_if):
        users = list(node.users)
        if users and all(u.target is ops.rate_readout_affine and get_arg(u, 0, "spikes") is node
                         and get_arg(u, 1, "weight") is not node for u in users) \
                and attr_tensor(gm, get_arg(node, 1, "threshold")) is not None:
            out.append(_Layer(gm, node))
    return out


def _readout(args: tuple, kwargs: dict, value: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
    """``rate_readout_affine`` on a real value in the units of the neuron input: ``W v + b``
    with ``W = W_folded / theta0`` (spike-encode folded theta0 into the weight columns)."""
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return F.linear((value / theta0).to(weight.dtype), weight, bias)


class _LayerError:
    """Mean squared error of a layer's spiking output ``W q + b`` against the reference
    output ``y`` (the unquantized network's), over tokens and outputs.

    w ``[out, F]``, b ``[out]`` or None: the layer's (unfolded) weights; x_f ``[..., F]``:
    the unquantized input; y ``[..., out]``: the reference output, ``W x_f + b`` when None.
    When the layer has more outputs than inputs the error goes through the Gram matrix
    ``G = W^T W`` and the least-squares input ``t`` with ``W t + b`` closest to ``y``:
    ``||W q + b - y||^2 = (q - t)^T G (q - t) + const``, so the constant (what no ``q``
    can reach) is left out."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, x_f: torch.Tensor, y: torch.Tensor | None,
                 gram: torch.Tensor | None = None):
        self.outputs, features = w.shape
        x_f = x_f.reshape(-1, features).float()
        self.gram = None
        if self.outputs > features:
            self.gram = gram if gram is not None else w.T @ w
            if y is None:
                self.target = x_f
            else:
                rhs = (y.reshape(-1, self.outputs).float() - (0.0 if b is None else b)) @ w
                ridge = 1e-6 * self.gram.diagonal().mean() * torch.eye(features, device=w.device)
                self.target = torch.linalg.solve(self.gram + ridge, rhs.T).T
        else:
            self.w, self.b = w, b
            self.target = (F.linear(x_f, w, b) if y is None else y.reshape(-1, self.outputs).float())

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        q = q.reshape(-1, q.shape[-1]).float()
        if self.gram is not None:
            e = q - self.target
            return ((e @ self.gram) * e).sum(-1).mean() / self.outputs
        return (F.linear(q, self.w, self.b) - self.target).pow(2).mean()


def _calibrate_layer(layer: _Layer, xs_fit: torch.Tensor, xs_val: torch.Tensor, err_fit: _LayerError,
                     err_val: _LayerError, mode: str, steps: int, lr: float, seed: int,
                     learn: tuple[str, ...] = FINE_PARAMS["both"]) -> None:
    """Calibrate one layer on its spiking-network inputs (fitting and validation tokens)
    against the reference outputs held by ``err_fit`` and ``err_val``. Coarse: the
    multiplier of theta0 of least fitting error (grid search).
    Fine: then per-neuron thresholds and/or initial membranes (``learn``) by gradient
    descent. Each step
    is kept only if it lowers the validation error (the fitting error when there is no
    validation data)."""

    def errors(theta: torch.Tensor, v_init: float | torch.Tensor) -> tuple[float, float]:
        return (float(err_fit(layer.quantize(xs_fit, theta, v_init))),
                float(err_val(layer.quantize(xs_val, theta, v_init))))

    with torch.no_grad():
        base = errors(layer.theta0, layer.v_init0)
        best, best_fit = 1.0, base[0]
        lo, hi, n = COARSE_GRID
        ratio = (hi / lo) ** (1.0 / (n - 1))
        grid = [lo * ratio**i for i in range(n)]
        for _round in range(2):
            for a in grid:
                err = float(err_fit(layer.quantize(xs_fit, layer.theta0 * a, layer.v_init0)))
                if err < best_fit:
                    best, best_fit = a, err
            grid = [best * ratio ** (i / 4) for i in range(-3, 4) if i]  # then between the neighbours
        coarse = errors(layer.theta0 * best, layer.v_init0)
    layer.before, layer.fit_before = base[1], base[0]
    layer.theta, layer.v_init, layer.after, layer.fit_after = layer.theta0, layer.v_init0, base[1], base[0]
    if coarse[1] <= base[1]:
        layer.theta, layer.after, layer.fit_after = layer.theta0 * best, coarse[1], coarse[0]
    if mode != "fine" or steps == 0:
        return
    params: dict[str, torch.Tensor] = {}
    if "threshold" in learn:
        params["log_theta"] = torch.log(layer.theta).detach().clone().requires_grad_(True)
    if "v_init" in learn:
        v0 = torch.as_tensor(layer.v_init, dtype=torch.float32, device=xs_fit.device)
        params["v_init"] = v0.expand_as(layer.theta).clone().requires_grad_(True)
    theta_of = lambda: torch.exp(params["log_theta"]) if "log_theta" in params else layer.theta
    v_init_of = lambda: params.get("v_init", layer.v_init)
    with torch.enable_grad():  # the layer pass runs the network under no_grad
        train(params, lambda step: err_fit(layer.quantize(xs_fit, theta_of(), v_init_of())),
              TrainConfig(steps=steps, lr=lr, grad_clip=None, seed=seed, progress=False, desc=layer.name))
    with torch.no_grad():
        theta, v = theta_of().detach().clone(), v_init_of()
        v = v.detach().clone() if isinstance(v, torch.Tensor) else v
        fine = errors(theta, v)
    if fine[1] < layer.after:
        layer.theta, layer.v_init, layer.after, layer.fit_after = theta, v, fine[1], fine[0]


def _sequential(gm: fx.GraphModule, layers: list[_Layer], ids: torch.Tensor, fit: int, mode: str, steps: int,
                lr: float, seed: int, learn: tuple[str, ...], reference: dict | None, state: dict,
                save: Callable[[], None], progress: bool) -> torch.Tensor:
    """Calibrate ``layers`` in graph order on ``ids`` (the first ``fit`` sequences fit, the
    others validate), running the unquantized reference network and the spiking one
    (calibrated so far) side by side; layers found in ``state["layers"]`` are taken from
    it. The reference is the module's own weights, or the original ones ``qcfs-finetune``
    left in ``reference``. Returns the reference network's logits (the logits term's target)."""
    by_node = {layer.node: layer for layer in layers}
    readout_of = {r: layer for layer in layers for r in layer.readouts}
    ref_attrs = (reference or {}).get("attrs", {})
    ref_affines = (reference or {}).get("affines", {})
    bar = tqdm(total=len(layers), desc=f"fas-calibrate ({mode})", unit="layer", disable=not progress, leave=False)

    def attr(target: str) -> Any:
        value = fetch_attr(gm, target)
        original = ref_attrs.get(target)
        return value if original is None or original is value else (original.to(value.device), value)

    def current_affine(r: fx.Node, theta0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = get_arg(r, 2, "bias")
        return (attr_tensor(gm, get_arg(r, 1, "weight")).float() / theta0[None, :],
                None if bias is None else attr_tensor(gm, bias).float())

    def reference_output(r: fx.Node, x_f: torch.Tensor) -> torch.Tensor | None:
        if spikec_name(r) not in ref_affines:
            return None
        w, b = ref_affines[spikec_name(r)]
        return F.linear(x_f, w.to(x_f.device).to(x_f.dtype), None if b is None else b.to(x_f.device).to(x_f.dtype))

    def layer_errors(layer: _Layer, x_f: torch.Tensor) -> tuple[_LayerError, _LayerError]:
        pairs = [current_affine(r, layer.theta0) for r in layer.readouts]
        w = torch.cat([p[0] for p in pairs])
        biases = [p[1] if p[1] is not None else torch.zeros(p[0].shape[0], device=w.device) for p in pairs]
        b = torch.cat(biases) if any(p[1] is not None for p in pairs) else None
        refs = [reference_output(r, x_f) for r in layer.readouts]
        y = None if all(ref is None for ref in refs) else torch.cat(
            [ref if ref is not None else F.linear(x_f.float(), p[0], p[1]) for ref, p in zip(refs, pairs)], -1)
        n_val = x_f.shape[0] - fit
        split = (slice(0, fit), slice(fit, None) if n_val > 0 else slice(0, fit))
        fit_err = _LayerError(w, b, x_f[split[0]], None if y is None else y[split[0]])
        val_err = _LayerError(w, b, x_f[split[1]], None if y is None else y[split[1]], gram=fit_err.gram)
        return fit_err, val_err

    def call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
        # args hold (reference, spiking) pairs wherever the two streams differ
        if node in by_node:
            layer = by_node[node]
            x_f, x_s = _pair(args[0])
            saved = state["layers"].get(layer.name)
            if saved is None:
                err_fit, err_val = layer_errors(layer, x_f)
                xs_val = x_s[fit:] if x_s.shape[0] > fit else x_s[:fit]
                _calibrate_layer(layer, x_s[:fit], xs_val, err_fit, err_val, mode, steps, lr, seed, learn)
                state["layers"][layer.name] = {"theta": layer.theta.cpu(), "v_init": _cpu(layer.v_init),
                                               **{k: getattr(layer, k) for k in _ERRORS}}
                save()
            else:
                layer.theta = saved["theta"].to(x_s.device)
                layer.v_init = saved["v_init"].to(x_s.device) if isinstance(saved["v_init"], torch.Tensor) \
                    else saved["v_init"]
                for k in _ERRORS:
                    setattr(layer, k, saved[k])
            bar.update(1)
            with torch.no_grad():
                return (x_f, layer.quantize(x_s))
        if node in readout_of:
            theta0 = readout_of[node].theta0
            v_f, v_s = _pair(args[0])
            y_f = reference_output(node, v_f)
            if y_f is None:
                y_f = _readout(*_pick(args, kwargs, 0), v_f, theta0)
            return (y_f, _readout(*_pick(args, kwargs, 1), v_s, theta0))
        fa, fk = _pick(args, kwargs, 0)
        sa, sk = _pick(args, kwargs, 1)
        out_f = node.target(*fa, **fk)
        same = all(a is b for a, b in zip(_flat(fa, fk), _flat(sa, sk)))
        return out_f if same else (out_f, node.target(*sa, **sk))

    with torch.no_grad():
        out = _execute(gm, ids, attr, call)
    bar.close()
    return out[0] if isinstance(out, tuple) else out


def _is_pair(a: Any) -> bool:
    return isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], torch.Tensor)


def _pair(a: Any) -> tuple[Any, Any]:
    """A value of the two streams as (float, spiking); one value when they agree."""
    return a if _is_pair(a) else (a, a)


def _cpu(v: float | torch.Tensor) -> float | torch.Tensor:
    return v.detach().cpu() if isinstance(v, torch.Tensor) else v


def _pick(args: tuple, kwargs: dict, stream: int) -> tuple[tuple, dict]:
    """One stream's arguments: pairs (float, spiking) resolved to element ``stream``."""
    sel = lambda a: a[stream] if _is_pair(a) else a
    return tuple(sel(a) for a in args), {k: sel(v) for k, v in kwargs.items()}


def _flat(args: tuple, kwargs: dict) -> list[Any]:
    return [*args, *kwargs.values()]


def _spiking_forward(gm: fx.GraphModule, layers: list[_Layer], ids: torch.Tensor,
                     params: Callable[[_Layer], tuple[torch.Tensor, float | torch.Tensor]]) -> torch.Tensor:
    """Logits of the spiking network (closed-form neuron rates, straight-through gradients)
    with each layer's (thresholds, v_init) from ``params``."""
    by_node = {layer.node: layer for layer in layers}
    readout_of = {r: layer for layer in layers for r in layer.readouts}

    def call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node in by_node:
            layer = by_node[node]
            theta, v_init = params(layer)
            return layer.quantize(args[0], theta, v_init)
        if node in readout_of:
            return _readout(args, kwargs, args[0], readout_of[node].theta0)
        return node.target(*args, **kwargs)

    return _execute(gm, ids, lambda t: fetch_attr(gm, t), call)


def _logits_step(gm: fx.GraphModule, layers: list[_Layer], ids: torch.Tensor, teacher: torch.Tensor, mode: str,
                 learn: tuple[str, ...], steps: int, lr: float, seed: int, checkpoint: Path, run_id: str,
                 progress: bool) -> list[float]:
    """Jointly adjust every layer's calibration to lower KL(unquantized logits || spiking
    logits): per-layer log multipliers (coarse), or per-neuron log thresholds and/or v_init
    (fine, as ``learn`` says)."""
    params: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        if mode == "fine" and "threshold" in learn:
            params[f"{i}.log_theta"] = torch.log(layer.theta).detach().clone().requires_grad_(True)
        elif mode != "fine":
            params[f"{i}.log_scale"] = torch.zeros((), device=layer.theta.device, requires_grad=True)
        if mode == "fine" and "v_init" in learn:
            v = torch.as_tensor(layer.v_init, dtype=torch.float32, device=layer.theta.device)
            params[f"{i}.v_init"] = v.expand_as(layer.theta).clone().requires_grad_(True)
    index = {layer.node: i for i, layer in enumerate(layers)}

    def layer_params(layer: _Layer) -> tuple[torch.Tensor, float | torch.Tensor]:
        i = index[layer.node]
        theta = layer.theta
        if f"{i}.log_theta" in params:
            theta = torch.exp(params[f"{i}.log_theta"])
        elif f"{i}.log_scale" in params:
            theta = theta * torch.exp(params[f"{i}.log_scale"])
        return theta, params.get(f"{i}.v_init", layer.v_init)

    result = train(params, lambda step: _kl(_spiking_forward(gm, layers, ids, layer_params), teacher),
                   TrainConfig(steps=steps, lr=lr, grad_clip=1.0, checkpoint=str(checkpoint), checkpoint_every=5,
                               seed=seed, desc="fas-calibrate logits", progress=progress),
                   extra_fingerprint=run_id)
    with torch.no_grad():
        for layer in layers:
            theta, v_init = layer_params(layer)
            layer.theta = theta.detach().clone()
            layer.v_init = v_init.detach().clone() if isinstance(v_init, torch.Tensor) else v_init
    return result.losses


def _apply(gm: fx.GraphModule, layers: list[_Layer], mode: str) -> None:
    """Write each layer's thresholds (re-folding ``W_folded * theta / theta0`` into its
    readouts) and, in fine mode, its per-neuron v_init into the graph as new attributes."""
    stale: set[str] = set()
    graph = gm.graph
    for layer in layers:
        node = layer.node
        theta = layer.theta.detach().float()
        old_nodes = [get_arg(node, 1, "threshold")]
        with graph.inserting_before(node):
            set_arg(node, 1, "threshold", graph.get_attr(new_attr(gm, f"{layer.name}.threshold_fas",
                                                                  theta.to(layer.theta0.device))))
            if isinstance(layer.v_init, torch.Tensor):
                old_nodes.append(get_arg(node, 5, "v_init"))
                v_init = layer.v_init.detach().float().to(layer.theta0.device)
                set_arg(node, 5, "v_init", graph.get_attr(new_attr(gm, f"{layer.name}.v_init_fas", v_init)))
        ratio = (theta / layer.theta0).to(layer.theta0.device)
        for r in layer.readouts:
            w_node = get_arg(r, 1, "weight")
            w = attr_tensor(gm, w_node)
            with graph.inserting_before(r):
                folded = (w.float() * ratio[None, :]).to(w.dtype)
                set_arg(r, 1, "weight", graph.get_attr(new_attr(gm, f"{spikec_name(r)}.weight_fas", folded)))
            old_nodes.append(w_node)
        stale |= erase_if_unused(gm, old_nodes)
        meta = dict(node.meta.get(NEURON_KEY, {}))
        if isinstance(layer.v_init, torch.Tensor):
            meta["v_init"] = "per-neuron"
        node.meta[NEURON_KEY] = meta
        info = {"calibrate": mode, "layer_mse_before": layer.before, "layer_mse_after": layer.after,
                "layer_mse_before_fit": layer.fit_before, "layer_mse_after_fit": layer.fit_after,
                "threshold_scale_mean": float((theta / layer.theta0).mean())}
        node.meta[FAS_KEY] = info
        for r in layer.readouts:
            r.meta[NEURON_KEY] = dict(meta)
    drop_unused_attrs(gm, stale)


@register_pass("fas-calibrate")
def fas_calibrate(gm: fx.GraphModule, ctx: PassContext) -> None:
    """FAS stage 2: coarse-to-fine calibration of the SignedIF thresholds and initial membranes.

    Matches every ``ops.signed_if`` node whose users are all ``rate_readout_affine`` nodes
    reading its spikes (run after ``spike-encode``). Layer by layer in graph order, with
    the neurons' inputs taken from the spiking network calibrated so far and the target
    the unquantized output ``W x + b`` of the same weights (the stage-1 model), on
    ``fas_samples`` (8) calibration sequences of ``fas_seq_len`` (64) tokens, validated on
    the next ``fas_validation`` (4): ``coarse`` picks the per-layer threshold multiplier
    of least output MSE (grid search over 0.25..2); ``fine`` (``calibrate`` option, the
    default) then learns per-neuron thresholds and initial membrane potentials
    (``fas_steps`` 30 AdamW steps, ``fas_lr`` 5e-3, straight-through gradients). Each
    step is kept only where it lowers the layer's validation error. Then
    ``fas_logits_steps`` (0) joint steps (``fas_logits_lr`` 1e-3) lower the KL divergence
    of the logits to the unquantized model's. State: ``fas_state_dir`` (``fas_checkpoint``
    overrides the file), ``fas_reuse`` (True). Guarantees: each layer's output error on
    the validation tokens is at most what spike-encode's thresholds give (before the
    logits step); readout weights are re-folded to ``W * theta_new`` (new tensors);
    ``v_init`` becomes a per-neuron ``[F]`` attribute only in fine mode, on layers where
    that helped; an interrupted run resumes (finished layers are kept) and ends where an
    uninterrupted one ends.
    """
    start = time.perf_counter()
    mode = str(ctx.option("calibrate", "fine"))
    if mode not in CALIBRATE_MODES:
        raise UsageError(f"unknown calibrate mode {mode!r}; choose one of {', '.join(CALIBRATE_MODES)}")
    layers = _layers(gm)
    if not layers:
        raise UsageError("fas-calibrate found no SignedIF layer driving readout affines",
                         hint="run spike-encode before fas-calibrate")
    steps = _positive_int(ctx, "fas_steps", 30, low=0)
    lr = _positive_float(ctx, "fas_lr", 5e-3)
    logits_steps = _positive_int(ctx, "fas_logits_steps", 0, low=0)
    logits_lr = _positive_float(ctx, "fas_logits_lr", 1e-3)
    seq_len = _positive_int(ctx, "fas_seq_len", 64, low=2)
    samples = _positive_int(ctx, "fas_samples", 8)
    validation = _positive_int(ctx, "fas_validation", 4, low=0)
    seed = _positive_int(ctx, "fas_seed", 0, low=0)
    fine_params = str(ctx.option("fas_fine_params", "both"))
    if fine_params not in FINE_PARAMS:
        raise UsageError(f"unknown fas_fine_params {fine_params!r}; choose one of {', '.join(FINE_PARAMS)}")
    progress = bool(ctx.option("progress", True))
    device = _device(gm)
    ids = _sequences(ctx, seq_len, "fas-calibrate")[: samples + validation].to(device)
    if ids.shape[0] <= samples and validation:
        raise UsageError(f"fas-calibrate: the calibration text gives {ids.shape[0]} sequences of {seq_len} tokens, "
                         f"fewer than fas_samples {samples} + fas_validation {validation}",
                         hint="give more calibration text (--calib-samples), or lower fas_samples / fas_validation")

    settings = {"mode": mode, "steps": steps, "lr": lr, "samples": samples, "fine_params": fine_params, "logits_steps": logits_steps, "logits_lr": logits_lr,
                "seed": seed, "grid": COARSE_GRID, "layers": [layer.name for layer in layers]}
    tensors = [fetch_attr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    reference = gm.meta.get(REFERENCE_KEY)
    if reference:
        tensors += [t for _, t in sorted(reference["attrs"].items())]
        tensors += [t for _, wb in sorted(reference["affines"].items()) for t in wb if t is not None]
    run_id = _fingerprint([t for t in tensors if isinstance(t, torch.Tensor)], ids, settings)
    path = Path(ctx.option("fas_checkpoint") or _state_dir(ctx) / f"fas-{run_id}.pt").expanduser()
    reuse = bool(ctx.option("fas_reuse", True))
    state = _load(path, run_id) or {"run_id": run_id, "layers": {}, "complete": False}
    if state.get("complete") and not reuse:
        state = {"run_id": run_id, "layers": {}, "complete": False}
    reused = bool(state.get("complete"))
    resumed_layers = 0 if reused else len(state["layers"])

    if reused:
        for layer in layers:
            saved = state["final"][layer.name]
            layer.theta = saved["theta"].to(device)
            layer.v_init = saved["v_init"].to(device) if isinstance(saved["v_init"], torch.Tensor) else saved["v_init"]
            for k in _ERRORS:
                setattr(layer, k, state["layers"][layer.name][k])
        logits_losses = state.get("logits_losses", [])
    else:
        teacher = _sequential(gm, layers, ids, samples, mode, steps, lr, seed, FINE_PARAMS[fine_params], reference,
                              state, lambda: save_state(path, state), progress)
        logits_losses: list[float] = []
        if logits_steps:
            logits_losses = _logits_step(gm, layers, ids[:samples], teacher[:samples], mode, FINE_PARAMS[fine_params],
                                         logits_steps, logits_lr, seed,
                                         path.with_name(path.name + ".logits.ckpt"), run_id, progress)
        state["final"] = {layer.name: {"theta": layer.theta.cpu(), "v_init": _cpu(layer.v_init)} for layer in layers}
        state["logits_losses"] = logits_losses
        state["complete"] = True
        if reuse:
            save_state(path, state)
        elif path.exists():
            path.unlink()
    _apply(gm, layers, mode)
    gm.meta.pop(REFERENCE_KEY, None)  # the original weights are no longer needed
    before = sum(layer.before for layer in layers)
    after = sum(layer.after for layer in layers)
    ctx.record("calibrate", mode)
    ctx.record("target", "the original weights (before qcfs-finetune)" if reference else "the module's weights")
    ctx.record("run_id", run_id)
    ctx.record("state_file", str(path))
    ctx.record("reused_finished_run", reused)
    ctx.record("resumed_layers", resumed_layers)
    ctx.record("layers", len(layers))
    ctx.record("tokens", int(ids.numel()))
    ctx.record("steps_per_layer", steps if mode == "fine" else 0)
    ctx.record("tokens_fit", int(ids[:samples].numel()))
    ctx.record("layer_mse_sum_before", before)
    ctx.record("layer_mse_sum_after", after)
    ctx.record("layer_mse_sum_before_fit", sum(layer.fit_before for layer in layers))
    ctx.record("layer_mse_sum_after_fit", sum(layer.fit_after for layer in layers))
    ctx.record("layers_improved", sum(layer.after < layer.before for layer in layers))
    ctx.record("layers_per_neuron", sum(isinstance(layer.v_init, torch.Tensor) for layer in layers))
    ctx.record("logits_steps", logits_steps)
    ctx.record("logits_losses", [round(v, 6) for v in logits_losses])
    ctx.record("seconds", time.perf_counter() - start)
