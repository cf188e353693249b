"""A small, resumable gradient-descent loop shared by the fine-tuning passes.

The loop owns what every fine-tuning method needs and nothing model-specific:
AdamW over a named set of parameters, gradient clipping, a tqdm progress bar, a
checkpoint written atomically every few steps, and resumption from it. Batches are
chosen by the caller from the step index (``loss_fn(step)``), so a run interrupted
at step k and resumed computes exactly the steps it would have computed anyway:
resumed and uninterrupted runs end with the same parameters (the optimizer's moments and
the RNG states are saved too). Checkpoints are ``state_files`` states (safetensors plus
JSON, never pickle): a file that is not one, or that others could write, is ignored.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from spikec.core.errors import InputError, UsageError

from .state_files import load_state, other_run, save_state


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run.

    steps: optimizer steps in total (a resumed run stops at the same step).
    lr: AdamW learning rate; weight_decay: AdamW weight decay.
    grad_clip: maximum global gradient norm, or None.
    checkpoint: file to save to every ``checkpoint_every`` steps and to resume from
    (None: no checkpoint). seed: seeds torch and random before the first step.
    backward_in_loss: ``loss_fn`` accumulates the gradients itself (calls ``backward`` on
    parts of the loss) and returns the total loss for display and the finiteness check.
    lr_from: ``((step, lr), ...)``: from each ``step`` on (0-based, ascending) the learning rate
    is ``lr`` (e.g. a second phase with another objective); before the first, ``lr``.
    """

    steps: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    checkpoint: str | None = None
    checkpoint_every: int = 10
    seed: int = 0
    desc: str = "fine-tuning"
    progress: bool = True
    backward_in_loss: bool = False  # loss_fn back-propagates itself (e.g. piece by piece, to bound memory)
    lr_from: tuple[tuple[int, float], ...] = ()

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (see ``lr_from``)."""
        lr = self.lr
        for first, value in self.lr_from:
            if step >= first:
                lr = value
        return lr

    def validate(self) -> None:
        if self.steps < 0:
            raise UsageError(f"fine-tuning steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.checkpoint_every < 1:
            raise UsageError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if any(not value > 0 for _, value in self.lr_from):
            raise UsageError(f"learning rates must be positive, got {[v for _, v in self.lr_from]}")


@dataclass
class TrainResult:
    """What a run did: the loss of every step (including steps done before a resume),
    the step it resumed from (0 when it started fresh)."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def fingerprint(params: dict[str, torch.Tensor], cfg: TrainConfig, extra: str = "") -> str:
    """Identifies a run: parameter names and shapes, the settings that change the result,
    and ``extra`` (e.g. the method's options). A checkpoint resumes only a matching run."""
    h = hashlib.sha256()
    for name, p in sorted(params.items()):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint", "checkpoint_every", "progress", "desc")}
    h.update(repr(sorted(settings.items())).encode())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` in the form ``state_files.save_state`` stores: per-parameter state
    under string keys, and the ``param_groups`` (JSON values) as they are."""
    sd = opt.state_dict()
    return {"state": {str(i): dict(s) for i, s in sd["state"].items()}, "param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Restore ``optimizer_state``'s output (integer parameter indices, tuple ``betas``)."""
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
    opt.load_state_dict({"state": {int(i): s for i, s in saved["state"].items()}, "param_groups": groups})


def _load(path: Path, run_id: str) -> dict | None:
    if other_run(path, run_id):
        raise InputError(f"checkpoint {path} belongs to another fine-tuning run (other model, method or settings)",
                         hint="delete it, or pass another checkpoint path")
    return load_state(path, run_id, "fine-tuning checkpoint")


def train(
    params: dict[str, torch.Tensor],
    loss_fn: Callable[[int], torch.Tensor],
    cfg: TrainConfig,
    extra_fingerprint: str = "",
) -> TrainResult:
    """Minimise ``loss_fn(step)`` over ``params`` (leaf tensors, updated in place).

    loss_fn: returns a scalar loss for step ``step`` (0-based); it must pick its batch
    from the step index alone. With ``cfg.checkpoint`` set, an existing checkpoint of
    the same run (see ``fingerprint``) is resumed, and the file is removed once the
    run completes. Guarantees: an interrupted and resumed run yields the parameters
    of an uninterrupted one.
    """
    cfg.validate()
    named = {k: p for k, p in params.items()}
    for name, p in named.items():
        if not p.is_leaf or not p.requires_grad:
            raise UsageError(f"parameter {name} must be a leaf tensor with requires_grad=True")
    opt = torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run_id = fingerprint(named, cfg, extra_fingerprint)
    path = Path(cfg.checkpoint) if cfg.checkpoint else None
    result = TrainResult()
    start = 0
    state = _load(path, run_id) if path else None
    if state is not None:
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["params"][name])
        load_optimizer_state(opt, state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        version, internal, gauss = state["random_rng"]
        random.setstate((version, tuple(internal), gauss))
        start = int(state["step"])
        result.losses = list(state["losses"])
        result.resumed_from = start
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    bar = tqdm(range(start, cfg.steps), desc=cfg.desc, unit="step", initial=start, total=cfg.steps,
               disable=not cfg.progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise InputError(f"{cfg.desc}: the loss became {float(loss)} at step {step}",
                             hint="lower the learning rate")
        if not cfg.backward_in_loss:
            loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.grad_clip)
        opt.step()
        result.losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        done = step + 1
        if path is not None and (done % cfg.checkpoint_every == 0) and done < cfg.steps:
            save_state(path, {
                "run_id": run_id, "step": done, "losses": result.losses,
                "params": {k: p.detach().clone() for k, p in named.items()},
                "optimizer": optimizer_state(opt), "torch_rng": torch.get_rng_state(), "random_rng": random.getstate(),
            })
    if path is not None and path.exists():
        path.unlink()
    return result
