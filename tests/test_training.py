"""The shared fine-tuning loop: it lowers the loss, and a run interrupted and resumed
from its checkpoint ends exactly where an uninterrupted run ends."""

import pytest
import torch

from spikec.core.errors import InputError
from spikec.passes.training import TrainConfig, train

TARGET = torch.linspace(-1, 1, 8)


def _problem():
    torch.manual_seed(0)
    w = torch.zeros(8, requires_grad=True)

    def loss_fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)  # the batch depends on the step only
        x = torch.randn(16, 8, generator=g)
        return ((x * (w - TARGET)).sum(-1) ** 2).mean()

    return w, loss_fn


def test_training_decreases_the_loss():
    w, loss_fn = _problem()
    result = train({"w": w}, loss_fn, TrainConfig(steps=60, lr=0.05, progress=False))
    assert result.losses[-1] < 0.1 * result.losses[0]


class _Interrupt(Exception):
    pass


def _stopping_at(loss_fn, stop: int):
    """``loss_fn`` interrupted at step ``stop``."""

    def interrupted(step: int) -> torch.Tensor:
        if step == stop:
            raise _Interrupt
        return loss_fn(step)

    return interrupted


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    w_full, loss_fn = _problem()
    full = train({"w": w_full}, loss_fn, TrainConfig(steps=20, lr=0.05, progress=False))

    ckpt = tmp_path / "run.ckpt"
    cfg = TrainConfig(steps=20, lr=0.05, checkpoint=str(ckpt), checkpoint_every=5, progress=False)
    w_part, loss_fn = _problem()
    with pytest.raises(_Interrupt):
        train({"w": w_part}, _stopping_at(loss_fn, 12), cfg)
    assert ckpt.exists()
    w_resumed, loss_fn = _problem()
    resumed = train({"w": w_resumed}, loss_fn, cfg)
    assert resumed.resumed_from == 10
    assert torch.equal(w_resumed, w_full)
    assert resumed.losses == full.losses
    assert not ckpt.exists()  # removed once the run completes


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    w, loss_fn = _problem()
    with pytest.raises(_Interrupt):
        train({"w": w}, _stopping_at(loss_fn, 6),
              TrainConfig(steps=10, lr=0.05, checkpoint=str(ckpt), checkpoint_every=5, progress=False))
    w2, loss_fn = _problem()
    with pytest.raises(InputError, match="another fine-tuning run"):
        train({"w": w2}, loss_fn, TrainConfig(steps=10, lr=0.01, checkpoint=str(ckpt), progress=False))


def test_a_later_phase_runs_at_its_own_learning_rate():
    # loss = p: a constant gradient of 1, so each AdamW step moves p by its learning rate
    p = torch.zeros((), requires_grad=True)
    cfg = TrainConfig(steps=3, lr=0.1, grad_clip=None, progress=False, lr_from=((2, 0.01),))
    train({"p": p}, lambda step: p * 1.0, cfg)
    assert [cfg.lr_at(s) for s in range(3)] == [0.1, 0.1, 0.01]
    assert float(p) == pytest.approx(-0.21, abs=1e-6)


class _Planted:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_checkpoint_is_never_loaded_and_the_run_still_works(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run.ckpt"
    torch.save({"run_id": "x", "payload": _Planted(str(marker))}, ckpt)
    w, loss_fn = _problem()
    result = train({"w": w}, loss_fn, TrainConfig(steps=10, lr=0.05, checkpoint=str(ckpt), progress=False))
    assert not marker.exists()
    assert result.resumed_from == 0 and len(result.losses) == 10
    assert "not a spikec safetensors state" in capsys.readouterr().err


def test_a_checkpoint_others_can_write_is_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "run.ckpt"
    cfg = TrainConfig(steps=10, lr=0.05, checkpoint=str(ckpt), checkpoint_every=5, progress=False)
    w, loss_fn = _problem()
    with pytest.raises(_Interrupt):
        train({"w": w}, _stopping_at(loss_fn, 6), cfg)
    ckpt.chmod(0o666)
    w2, loss_fn = _problem()
    result = train({"w": w2}, loss_fn, cfg)
    assert result.resumed_from == 0
    assert "others cannot write" in capsys.readouterr().err
