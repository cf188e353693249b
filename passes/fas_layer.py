"""The per-layer machinery of FAS stage 2 (``fas-calibrate``, passes/fas_calibrate.py) and the
quantizer both stages train through.

``qcfs`` is the SignedIF rate quantizer with straight-through gradients. A ``Layer`` is one
SignedIF node and the readout affines it drives; ``find_layers`` finds them. ``calibrate_layers``
runs the unquantized reference network and the spiking one (calibrated so far) side by side
and calibrates each layer in graph order (``calibrate_layer``: coarse grid search, then fine
per-neuron thresholds and initial membranes) against its ``LayerError``; ``spiking_forward``
runs the spiking network with chosen layer parameters (for the joint logits step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from tqdm import tqdm

from spikec.core import ops

from .encode import V_INIT
from .fas_state import cpu_value
from .fx_graph import GraphRunner, attr_tensor, calls, fetch_attr, get_arg, spikec_name
from .training import TrainConfig, train

FINE_PARAMS = {"both": ("threshold", "v_init"), "threshold": ("threshold",), "v_init": ("v_init",)}
COARSE_GRID = (0.25, 2.0, 13)  # multipliers geomspace(lo, hi, n), then a finer grid around the best


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


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher) || softmax(student)), logits ``[..., V]``."""
    s = F.log_softmax(student.float().reshape(-1, student.shape[-1]), -1)
    t = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


class Layer:
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


ERRORS = ("before", "after", "fit_before", "fit_after")


def find_layers(gm: fx.GraphModule) -> list[Layer]:
    """SignedIF nodes driven by a real current whose every user is a readout affine reading them."""
    out = []
    for node in calls(gm, ops.signed_if):
        users = list(node.users)
        if users and all(u.target is ops.rate_readout_affine and get_arg(u, 0, "spikes") is node
                         and get_arg(u, 1, "weight") is not node for u in users) \
                and attr_tensor(gm, get_arg(node, 1, "threshold")) is not None:
            out.append(Layer(gm, node))
    return out


def _readout(args: tuple, kwargs: dict, value: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
    """``rate_readout_affine`` on a real value in the units of the neuron input: ``W v + b``
    with ``W = W_folded / theta0`` (spike-encode folded theta0 into the weight columns)."""
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return F.linear((value / theta0).to(weight.dtype), weight, bias)


class LayerError:
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


def calibrate_layer(layer: Layer, xs_fit: torch.Tensor, xs_val: torch.Tensor, err_fit: LayerError,
                    err_val: LayerError, mode: str, steps: int, lr: float, seed: int,
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


def calibrate_layers(gm: fx.GraphModule, layers: list[Layer], ids: torch.Tensor, fit: int, mode: str,
                     steps: int, lr: float, seed: int, learn: tuple[str, ...], reference: dict | None,
                     state: dict, save: Callable[[], None], progress: bool) -> torch.Tensor:
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

    def layer_errors(layer: Layer, x_f: torch.Tensor) -> tuple[LayerError, LayerError]:
        pairs = [current_affine(r, layer.theta0) for r in layer.readouts]
        w = torch.cat([p[0] for p in pairs])
        biases = [p[1] if p[1] is not None else torch.zeros(p[0].shape[0], device=w.device) for p in pairs]
        b = torch.cat(biases) if any(p[1] is not None for p in pairs) else None
        refs = [reference_output(r, x_f) for r in layer.readouts]
        y = None if all(ref is None for ref in refs) else torch.cat(
            [ref if ref is not None else F.linear(x_f.float(), p[0], p[1]) for ref, p in zip(refs, pairs)], -1)
        n_val = x_f.shape[0] - fit
        split = (slice(0, fit), slice(fit, None) if n_val > 0 else slice(0, fit))
        fit_err = LayerError(w, b, x_f[split[0]], None if y is None else y[split[0]])
        val_err = LayerError(w, b, x_f[split[1]], None if y is None else y[split[1]], gram=fit_err.gram)
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
                calibrate_layer(layer, x_s[:fit], xs_val, err_fit, err_val, mode, steps, lr, seed, learn)
                state["layers"][layer.name] = {"theta": layer.theta.cpu(), "v_init": cpu_value(layer.v_init),
                                               **{k: getattr(layer, k) for k in ERRORS}}
                save()
            else:
                layer.theta = saved["theta"].to(x_s.device)
                layer.v_init = saved["v_init"].to(x_s.device) if isinstance(saved["v_init"], torch.Tensor) \
                    else saved["v_init"]
                for k in ERRORS:
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
        out = GraphRunner(gm, attr, call, "fas-calibrate").run(ids)
    bar.close()
    return out[0] if isinstance(out, tuple) else out


def _is_pair(a: Any) -> bool:
    return isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], torch.Tensor)


def _pair(a: Any) -> tuple[Any, Any]:
    """A value of the two streams as (float, spiking); one value when they agree."""
    return a if _is_pair(a) else (a, a)


def _pick(args: tuple, kwargs: dict, stream: int) -> tuple[tuple, dict]:
    """One stream's arguments: pairs (float, spiking) resolved to element ``stream``."""
    sel = lambda a: a[stream] if _is_pair(a) else a
    return tuple(sel(a) for a in args), {k: sel(v) for k, v in kwargs.items()}


def _flat(args: tuple, kwargs: dict) -> list[Any]:
    return [*args, *kwargs.values()]


def spiking_forward(gm: fx.GraphModule, layers: list[Layer], ids: torch.Tensor,
                    params: Callable[[Layer], tuple[torch.Tensor, float | torch.Tensor]]) -> torch.Tensor:
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

    return GraphRunner(gm, call=call, what="fas-calibrate").run(ids)
