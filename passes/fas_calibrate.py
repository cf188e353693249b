"""``fas-calibrate``: FAS stage 2 (Chen et al., arXiv 2502.04405), coarse-to-fine calibration of
the SignedIF neurons that ``spike-encode`` inserted, layer by layer in graph order.

``coarse`` finds one threshold multiplier per layer (grid search), ``fine`` then learns
per-neuron thresholds and initial membrane potentials, each minimising the MSE between the
layer's spiking output (mean over T, through the neuron model with straight-through
gradients; the neurons' inputs come from the spiking network calibrated so far) and the
unquantized layer output of the same weights (passes/fas_layer.py); optionally a final joint
step minimises the KL divergence of the logits. Thresholds are re-folded into the readout
weights. Progress and the finished result are kept in a state file keyed by a fingerprint
of the weights, the calibration tokens and the options (passes/fas_state.py), so an
interrupted compile resumes and a repeated one reuses the result. docs/fas.md has the details.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .encode import NEURON_KEY
from .fas_layer import (
    COARSE_GRID,
    ERRORS,
    FINE_PARAMS,
    Layer,
    calibrate_layers,
    find_layers,
    kl,
    spiking_forward,
)
from .fas_state import REFERENCE_KEY, cpu_value, fingerprint, load, private_state_dir, sequences
from .fx_graph import (
    attr_tensor,
    drop_unused_attrs,
    erase_if_unused,
    fetch_attr,
    get_arg,
    module_device,
    new_attr,
    set_arg,
    spikec_name,
)
from .state_files import save_state
from .training import TrainConfig, train

FAS_KEY = "spikec_fas"  # neuron meta written by fas-calibrate
CALIBRATE_MODES = ("coarse", "fine")


@dataclass(frozen=True)
class FASOptions:
    """Options of the ``fas-calibrate`` pass (docs/fas.md)."""

    mode: str = option_field("calibrate", "fine", "coarse: one threshold multiplier per layer; fine: then "
                             "per-neuron thresholds and initial membranes")
    steps: int = option_field("fas_steps", 30, "AdamW steps per layer (fine)", low=0)
    lr: float = option_field("fas_lr", 5e-3, "learning rate of the per-layer steps")
    logits_steps: int = option_field("fas_logits_steps", 0, "joint steps lowering the logits' KL divergence",
                                     low=0)
    logits_lr: float = option_field("fas_logits_lr", 1e-3, "learning rate of the logits steps")
    seq_len: int = option_field("fas_seq_len", 64, "tokens per calibration sequence", low=2)
    samples: int = option_field("fas_samples", 8, "calibration sequences fitted", low=1)
    validation: int = option_field("fas_validation", 4, "further sequences that validate each step", low=0)
    seed: int = option_field("fas_seed", 0, "seed of the fitting steps", low=0)
    fine_params: str = option_field("fas_fine_params", "both", "what fine mode learns: both, threshold or v_init",
                                    choices=tuple(FINE_PARAMS))
    state_dir: str | None = option_field("fas_state_dir", None, "state folder (default ~/.cache/spikec/fas)")
    checkpoint: str | None = option_field("fas_checkpoint", None, "state file (default: in fas_state_dir)")
    reuse: bool = option_field("fas_reuse", True, "keep the finished result and reuse it for an identical run")
    progress: bool = option_field("progress", True, "progress bars")

    def __post_init__(self) -> None:
        if self.mode not in CALIBRATE_MODES:
            raise UsageError(f"unknown calibrate mode {self.mode!r}; choose one of {', '.join(CALIBRATE_MODES)}")
        for key, value in (("fas_lr", self.lr), ("fas_logits_lr", self.logits_lr)):
            if not value > 0:
                raise UsageError(f"option {key} must be positive, got {value!r}")


def _logits_step(gm: fx.GraphModule, layers: list[Layer], ids: torch.Tensor, teacher: torch.Tensor, mode: str,
                 learn: tuple[str, ...], steps: int, lr: float, seed: int, checkpoint: Path | None, run_id: str,
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

    def layer_params(layer: Layer) -> tuple[torch.Tensor, float | torch.Tensor]:
        i = index[layer.node]
        theta = layer.theta
        if f"{i}.log_theta" in params:
            theta = torch.exp(params[f"{i}.log_theta"])
        elif f"{i}.log_scale" in params:
            theta = theta * torch.exp(params[f"{i}.log_scale"])
        return theta, params.get(f"{i}.v_init", layer.v_init)

    cfg = TrainConfig(steps=steps, lr=lr, grad_clip=1.0, checkpoint=None if checkpoint is None else str(checkpoint),
                      checkpoint_every=5, seed=seed, desc="fas-calibrate logits", progress=progress)
    result = train(params, lambda step: kl(spiking_forward(gm, layers, ids, layer_params), teacher), cfg,
                   extra_fingerprint=run_id)
    with torch.no_grad():
        for layer in layers:
            theta, v_init = layer_params(layer)
            layer.theta = theta.detach().clone()
            layer.v_init = v_init.detach().clone() if isinstance(v_init, torch.Tensor) else v_init
    return result.losses


def _apply(gm: fx.GraphModule, layers: list[Layer], mode: str) -> None:
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


def _run_id(gm: fx.GraphModule, ids: torch.Tensor, opts: FASOptions, layers: list[Layer],
            reference: dict | None) -> str:
    """The fingerprint of this calibration: the module's tensors, the stage-1 reference
    weights, the calibration ids and the settings that change the result."""
    settings = {"mode": opts.mode, "steps": opts.steps, "lr": opts.lr, "samples": opts.samples,
                "fine_params": opts.fine_params, "logits_steps": opts.logits_steps, "logits_lr": opts.logits_lr,
                "seed": opts.seed, "grid": COARSE_GRID, "layers": [layer.name for layer in layers]}
    tensors = [fetch_attr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    if reference:
        tensors += [t for _, t in sorted(reference["attrs"].items())]
        tensors += [t for _, wb in sorted(reference["affines"].items()) for t in wb if t is not None]
    return fingerprint([t for t in tensors if isinstance(t, torch.Tensor)], ids, settings)


def _state_path(opts: FASOptions, run_id: str) -> Path | None:
    """``fas_checkpoint``, else ``fas-<run_id>.pt`` in the private state folder (None: no state)."""
    if opts.checkpoint:
        return Path(opts.checkpoint).expanduser()
    folder = private_state_dir(opts.state_dir)
    return None if folder is None else folder / f"fas-{run_id}.pt"


def _restore(layers: list[Layer], state: dict, device: torch.device) -> None:
    """Set every layer's calibration from a finished run's state."""
    for layer in layers:
        saved = state["final"][layer.name]
        layer.theta = saved["theta"].to(device)
        layer.v_init = saved["v_init"].to(device) if isinstance(saved["v_init"], torch.Tensor) else saved["v_init"]
        for k in ERRORS:
            setattr(layer, k, state["layers"][layer.name][k])


def _calibrate(gm: fx.GraphModule, layers: list[Layer], ids: torch.Tensor, opts: FASOptions, reference: dict | None,
               state: dict, path: Path | None, run_id: str) -> list[float]:
    """Calibrate layer by layer (saving progress to ``path``), then the joint logits step;
    returns the logits step's losses and completes ``state``."""
    learn = FINE_PARAMS[opts.fine_params]
    save = (lambda: None) if path is None else (lambda: save_state(path, state))
    teacher = calibrate_layers(gm, layers, ids, opts.samples, opts.mode, opts.steps, opts.lr, opts.seed, learn,
                               reference, state, save, opts.progress)
    losses: list[float] = []
    if opts.logits_steps:
        checkpoint = None if path is None else path.with_name(path.name + ".logits.ckpt")
        losses = _logits_step(gm, layers, ids[:opts.samples], teacher[:opts.samples], opts.mode, learn,
                              opts.logits_steps, opts.logits_lr, opts.seed, checkpoint, run_id, opts.progress)
    state["final"] = {layer.name: {"theta": layer.theta.cpu(), "v_init": cpu_value(layer.v_init)} for layer in layers}
    state["logits_losses"] = losses
    state["complete"] = True
    return losses


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
    opts = from_options(FASOptions, ctx.options)
    mode = opts.mode
    layers = find_layers(gm)
    if not layers:
        raise UsageError("fas-calibrate found no SignedIF layer driving readout affines",
                         hint="run spike-encode before fas-calibrate")
    samples, validation, seq_len = opts.samples, opts.validation, opts.seq_len
    device = module_device(gm)
    ids = sequences(ctx, seq_len, "fas-calibrate")[: samples + validation].to(device)
    if ids.shape[0] <= samples and validation:
        raise UsageError(f"fas-calibrate: the calibration text gives {ids.shape[0]} sequences of {seq_len} tokens, "
                         f"fewer than fas_samples {samples} + fas_validation {validation}",
                         hint="give more calibration text (--calib-samples), or lower fas_samples / fas_validation")
    reference = gm.meta.get(REFERENCE_KEY)
    run_id = _run_id(gm, ids, opts, layers, reference)
    path = _state_path(opts, run_id)
    fresh = {"run_id": run_id, "layers": {}, "complete": False}
    state = load(path, run_id) or fresh
    if state.get("complete") and not opts.reuse:
        state = fresh
    reused = bool(state.get("complete"))
    resumed_layers = 0 if reused else len(state["layers"])
    if reused:
        _restore(layers, state, device)
        logits_losses = state.get("logits_losses", [])
    else:
        logits_losses = _calibrate(gm, layers, ids, opts, reference, state, path, run_id)
        if path is not None and opts.reuse:
            save_state(path, state)
        elif path is not None and path.exists():
            path.unlink()
    _apply(gm, layers, mode)
    gm.meta.pop(REFERENCE_KEY, None)  # the original weights are no longer needed
    before = sum(layer.before for layer in layers)
    after = sum(layer.after for layer in layers)
    ctx.record("calibrate", mode)
    ctx.record("target", "the original weights (before qcfs-finetune)" if reference else "the module's weights")
    ctx.record("run_id", run_id)
    ctx.record("state_file", None if path is None else str(path))
    ctx.record("reused_finished_run", reused)
    ctx.record("resumed_layers", resumed_layers)
    ctx.record("layers", len(layers))
    ctx.record("tokens", int(ids.numel()))
    ctx.record("steps_per_layer", opts.steps if mode == "fine" else 0)
    ctx.record("tokens_fit", int(ids[:samples].numel()))
    ctx.record("layer_mse_sum_before", before)
    ctx.record("layer_mse_sum_after", after)
    ctx.record("layer_mse_sum_before_fit", sum(layer.fit_before for layer in layers))
    ctx.record("layer_mse_sum_after_fit", sum(layer.fit_after for layer in layers))
    ctx.record("layers_improved", sum(layer.after < layer.before for layer in layers))
    ctx.record("layers_per_neuron", sum(isinstance(layer.v_init, torch.Tensor) for layer in layers))
    ctx.record("logits_steps", opts.logits_steps)
    ctx.record("logits_losses", [round(v, 6) for v in logits_losses])
    ctx.record("seconds", time.perf_counter() - start)
