"""``qcfs-finetune``: FAS stage 1 (Chen et al., arXiv 2502.04405), after ``calibrate`` and the
outlier passes, before ``spike-encode``.

Full-parameter fine-tuning with every calibrated affine input replaced by the quantizer its
SignedIF neurons will implement at the compile's T (QCFS: clip-floor-shift with ``L = B*T``
levels per sign, shift ``v_init = 1/2``; ``fas_layer.qcfs``), straight-through gradients for
the floor, and one learnable clip threshold multiplier per layer. Loss: KL divergence to the
unquantized model's logits (distillation, so the model does not drift towards the
calibration text), optionally plus the language-model loss. The weights are written back and
the learned multipliers go into ``meta["spikec_neuron"]["range_scale"]``, where
``spike-encode`` reads its thresholds. The weights before fine-tuning stay in
``gm.meta[fas_state.REFERENCE_KEY]`` as ``fas-calibrate``'s target.

The loop is ``training.train`` (checkpoint and resume); the finished result may be kept in
the FAS state folder (``qcfs_reuse``), keyed by a fingerprint of the weights, the
calibration tokens and the options. docs/fas.md has the details.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from spikec.core import ops
from spikec.core.errors import UsageError
from spikec.core.options import from_options, option_field
from spikec.core.passes import PassContext

from .calibrate import META_KEY as CALIBRATION_KEY
from .encode import NEURON_KEY, neuron_config, provably_nonnegative, thresholds
from .fas_layer import kl, qcfs
from .fas_state import REFERENCE_KEY, fingerprint, load, private_state_dir, sequences
from .fx_graph import GraphRunner, attr_tensor, calls, fetch_attr, get_arg, module_device, replace_attr, spikec_name
from .state_files import save_state
from .training import TrainConfig, train

LOSSES = ("kl", "lm", "kl+lm")
Site = tuple[fx.Node, dict, torch.Tensor, bool]  # (affine, neuron config, thresholds, signed)


@dataclass(frozen=True)
class QCFSOptions:
    """Options of the ``qcfs-finetune`` pass (docs/fas.md)."""

    steps: int = option_field("qcfs_steps", 100, "optimizer steps", low=0)
    lr: float = option_field("qcfs_lr", 1e-5, "AdamW learning rate of the weights")
    threshold_lr: float = option_field("qcfs_threshold_lr", 1e-2, "the threshold multipliers' step, in log units")
    seq_len: int = option_field("qcfs_seq_len", 64, "tokens per training sequence", low=2)
    batch: int = option_field("qcfs_batch", 4, "sequences per step", low=1)
    loss: str = option_field("qcfs_loss", "kl", "kl (to the unquantized model's logits), lm, or kl+lm",
                             choices=LOSSES)
    params: str = option_field("qcfs_params", "all", "all: weights and thresholds; thresholds: thresholds only",
                               choices=("all", "thresholds"))
    seed: int = option_field("qcfs_seed", 0, "seed of the batch order and the loop", low=0)
    checkpoint: str | None = option_field("qcfs_checkpoint", None, "checkpoint file (default: in fas_state_dir)")
    checkpoint_every: int = option_field("qcfs_checkpoint_every", 10, "steps between checkpoints", low=1)
    reuse: bool = option_field("qcfs_reuse", False, "keep the finished result in fas_state_dir and reuse it")
    teacher_cache_mb: float = option_field("qcfs_teacher_cache_mb", 2048, "memory for cached teacher logits, MiB")
    state_dir: str | None = option_field("fas_state_dir", None, "state folder (default ~/.cache/spikec/fas)")
    progress: bool = option_field("progress", True, "progress bars")

    def __post_init__(self) -> None:
        for key, value in (("qcfs_lr", self.lr), ("qcfs_threshold_lr", self.threshold_lr)):
            if not value > 0:
                raise UsageError(f"option {key} must be positive, got {value!r}")


@dataclass
class _Trainable:
    """The tensors qcfs-finetune trains: clones of the module's floating attributes (tied
    attributes share one clone) and the per-site log threshold multipliers."""

    originals: dict[str, Any]  # attribute target -> the module's value
    leaves: dict[str, torch.Tensor]  # attribute target -> trainable clone
    params: dict[str, torch.Tensor]  # unique trainables by name, as train() takes them
    log_scale: torch.Tensor  # [sites]
    gain: float  # multiplier = exp(gain * log_scale)

    def scales(self) -> torch.Tensor:
        return torch.exp(self.gain * self.log_scale)


def _quantized_affines(gm: fx.GraphModule, ctx: PassContext) -> list[Site]:
    """(affine, neuron config, thresholds spike-encode would use, signed) per calibrated affine."""
    out = []
    for affine in calls(gm, ops.affine):
        if CALIBRATION_KEY in affine.meta:
            cfg = neuron_config(affine, ctx)
            theta = thresholds(affine.meta[CALIBRATION_KEY], cfg)
            out.append((affine, cfg, theta, not provably_nonnegative(get_arg(affine, 0, "x"))))
    return out


def _trainable(gm: fx.GraphModule, sites: list[Site], opts: QCFSOptions, device: torch.device) -> _Trainable:
    """Trainable clones of the floating attributes (``qcfs_params=all``) and the multipliers."""
    targets = sorted({node.target for node in gm.graph.nodes if node.op == "get_attr"})
    originals = {t: fetch_attr(gm, t) for t in targets}
    clones: dict[int, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}
    params: dict[str, torch.Tensor] = {}
    if opts.params == "all":
        for t in targets:
            value = originals[t]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if id(value) not in clones:
                    clones[id(value)] = value.detach().clone().requires_grad_(True)
                    params[t] = clones[id(value)]
                leaves[t] = clones[id(value)]
    # log multipliers, scaled so that AdamW's step of ~lr moves them by ~threshold_lr
    log_scale = torch.zeros(len(sites), device=device, requires_grad=True)
    params["qcfs.log_threshold_scale"] = log_scale
    return _Trainable(originals, leaves, params, log_scale, opts.threshold_lr / opts.lr)


def _student(gm: fx.GraphModule, sites: list[Site], trainable: _Trainable, timesteps: int,
             device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits ``[batch, positions, V]`` of the module with the trainable tensors and every
    site's input quantized by ``qcfs`` at the current multipliers."""
    site_of = {affine: i for i, (affine, *_rest) in enumerate(sites)}

    def run(ids: torch.Tensor) -> torch.Tensor:
        scales = trainable.scales()

        def call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
            i = site_of.get(node)
            if i is not None:
                _, cfg, theta, signed = sites[i]
                quantize = lambda x: qcfs(x, theta.to(device) * scales[i], timesteps, cfg["max_spikes"], signed)
                if args:
                    args = (quantize(args[0]), *args[1:])
                else:
                    kwargs = {**kwargs, "x": quantize(kwargs["x"])}
            return node.target(*args, **kwargs)

        attr = lambda t: trainable.leaves.get(t, trainable.originals[t])
        return GraphRunner(gm, attr, call, "qcfs-finetune").run(ids)

    return run


def _teacher(gm: fx.GraphModule, data: torch.Tensor, budget_bytes: float) -> Callable[[list[int]], torch.Tensor]:
    """Logits of the unquantized module for the sequences ``idx`` of ``data``, cached in
    float16 while all of them fit in ``budget_bytes``."""
    cache: dict[int, torch.Tensor] = {}
    n, seq_len = data.shape

    def teacher(idx: list[int]) -> torch.Tensor:
        missing = [i for i in idx if i not in cache]
        if missing:
            with torch.no_grad():
                logits = gm(data[missing]).float()
            if n * seq_len * logits.shape[-1] * 2 <= budget_bytes:
                cache.update({i: logits[j].to(torch.float16) for j, i in enumerate(missing)})
            else:
                return logits
        return torch.stack([cache[i] for i in idx]).float()

    return teacher


def _batches(n: int, batch: int, seed: int) -> Callable[[int], list[int]]:
    """The sequence indices of each step: epochs of seeded permutations of ``range(n)``."""
    perms: dict[int, torch.Tensor] = {}

    def batch_of(step: int) -> list[int]:
        out = []
        for j in range(batch):
            epoch, pos = divmod(step * batch + j, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            out.append(int(perms[epoch][pos]))
        return out

    return batch_of


def _train(gm: fx.GraphModule, sites: list[Site], trainable: _Trainable, data: torch.Tensor, opts: QCFSOptions,
           timesteps: int, checkpoint: Path | None, run_id: str) -> tuple[list[float], int]:
    """Run the loop; returns the losses of every step and the step it resumed from."""
    student = _student(gm, sites, trainable, timesteps, data.device)
    teacher = _teacher(gm, data, opts.teacher_cache_mb * 2**20)
    batch_of = _batches(data.shape[0], opts.batch, opts.seed)

    def loss_fn(step: int) -> torch.Tensor:
        idx = batch_of(step)
        ids = data[idx]
        logits = student(ids)
        loss = logits.new_zeros(())
        if "kl" in opts.loss:
            loss = loss + kl(logits, teacher(idx))
        if "lm" in opts.loss:
            loss = loss + F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                          ids[:, 1:].reshape(-1))
        return loss

    cfg = TrainConfig(steps=opts.steps, lr=opts.lr, weight_decay=0.0, grad_clip=None,
                      checkpoint=None if checkpoint is None else str(checkpoint),
                      checkpoint_every=opts.checkpoint_every, seed=opts.seed, desc="qcfs-finetune",
                      progress=opts.progress)
    result = train(trainable.params, loss_fn, cfg, extra_fingerprint=run_id)
    return result.losses, result.resumed_from


def _write_back(gm: fx.GraphModule, sites: list[Site], trainable: _Trainable) -> torch.Tensor:
    """Keep the weights before fine-tuning for fas-calibrate, replace the attributes by the
    trained tensors and multiply each site's ``range_scale``; returns the multipliers."""
    if trainable.leaves and REFERENCE_KEY not in gm.meta:  # no copy: the module's own old tensors
        gm.meta[REFERENCE_KEY] = {
            "attrs": {t: trainable.originals[t] for t in trainable.leaves},
            "affines": {spikec_name(a): (attr_tensor(gm, get_arg(a, 1, "weight")),
                                         attr_tensor(gm, get_arg(a, 2, "bias"))) for a, *_rest in sites},
        }
    with torch.no_grad():
        for t, leaf in trainable.leaves.items():
            replace_attr(gm, t, leaf.detach().clone().requires_grad_(False))
        scales = trainable.scales().cpu()
    for i, (affine, cfg, _, _) in enumerate(sites):
        affine.meta[NEURON_KEY] = {**affine.meta.get(NEURON_KEY, {}),
                                   "range_scale": float(cfg["range_scale"]) * float(scales[i])}
    return scales


def _run_id(trainable: _Trainable, sites: list[Site], data: torch.Tensor, opts: QCFSOptions, timesteps: int) -> str:
    """The fingerprint of this fine-tuning: the module's tensors, the sites' thresholds, the
    training sequences and the settings that change the result."""
    settings = {"timesteps": timesteps, "steps": opts.steps, "lr": opts.lr, "threshold_lr": opts.threshold_lr,
                "seq_len": opts.seq_len, "batch": opts.batch, "loss": opts.loss, "params": opts.params,
                "seed": opts.seed, "sites": [(spikec_name(a), c["max_spikes"], s) for a, c, _, s in sites]}
    tensors = [v for v in trainable.originals.values() if isinstance(v, torch.Tensor)]
    return fingerprint(tensors + [theta for _, _, theta, _ in sites], data, settings)


def _state_paths(opts: QCFSOptions, run_id: str) -> tuple[Path | None, Path | None]:
    """(checkpoint, finished-result file): ``qcfs_checkpoint``, else ``qcfs-<run_id>.ckpt`` in the
    private state folder; ``qcfs-<run_id>.done`` there (None where no private folder is used)."""
    folder = private_state_dir(opts.state_dir) if opts.reuse or not opts.checkpoint else None
    if opts.checkpoint:
        ckpt = Path(opts.checkpoint).expanduser()
    else:
        ckpt = None if folder is None else folder / f"qcfs-{run_id}.ckpt"
    return ckpt, None if folder is None else folder / f"qcfs-{run_id}.done"


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
        raise UsageError("qcfs-finetune must run before spike-encode",
                         hint="order: calibrate, qcfs-finetune, spike-encode")
    sites = _quantized_affines(gm, ctx)
    if not sites:
        raise UsageError("qcfs-finetune found no calibrated affine", hint="run the calibrate pass before qcfs-finetune")
    opts = from_options(QCFSOptions, ctx.options)
    T = ctx.timesteps
    device = module_device(gm)
    data = sequences(ctx, opts.seq_len, "qcfs-finetune").to(device)
    trainable = _trainable(gm, sites, opts, device)

    run_id = _run_id(trainable, sites, data, opts, T)
    ckpt, done_file = _state_paths(opts, run_id)
    done = load(done_file, run_id) if opts.reuse else None
    if done is not None:
        with torch.no_grad():
            for name, p in trainable.params.items():
                p.copy_(done["params"][name])
        losses, resumed_from = list(done["losses"]), -1
    else:
        losses, resumed_from = _train(gm, sites, trainable, data, opts, T, ckpt, run_id)
        if opts.reuse and done_file is not None:
            save_state(done_file, {"run_id": run_id, "losses": losses,
                                   "params": {k: p.detach().cpu() for k, p in trainable.params.items()}})
    scales = _write_back(gm, sites, trainable)
    ctx.record("run_id", run_id)
    ctx.record("checkpoint", None if ckpt is None else str(ckpt))
    ctx.record("reused_finished_run", done is not None)
    ctx.record("resumed_from", max(resumed_from, 0))
    ctx.record("steps", opts.steps)
    ctx.record("sequences", data.shape[0])
    ctx.record("seq_len", opts.seq_len)
    ctx.record("loss", opts.loss)
    ctx.record("params", opts.params)
    ctx.record("trainable_tensors", len(trainable.params))
    k = max(1, min(8, len(losses) // 4))  # batches differ: average a few steps at each end
    ctx.record("loss_before", sum(losses[:k]) / k if losses else None)
    ctx.record("loss_after", sum(losses[-k:]) / k if losses else None)
    ctx.record("losses", [round(v, 6) for v in losses])
    ctx.record("threshold_scale_min", float(scales.min()))
    ctx.record("threshold_scale_max", float(scales.max()))
    ctx.record("seconds", time.perf_counter() - start)
