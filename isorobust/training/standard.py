"""The training loop: cross-entropy plus weighted regularizers, Adam, shuffled minibatches."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from isorobust import io
from isorobust.data import ImageDataset
from isorobust.errors import IsorobustError
from isorobust.evaluation.clean import clean_metrics
from isorobust.models import MLP

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class Regularizer(Protocol):
    """A loss term: ``weight × term(x, logits, features, y)`` is added to the cross-entropy."""

    name: str
    weight: float
    needs_input_grad: bool  # the term differentiates through x (x then requires grad)

    def __call__(self, x: Tensor, logits: Tensor, features: list[Tensor], y: Tensor) -> Tensor: ...


def isometric_monitor(regularizers: Sequence[Regularizer], scale: float = 10.0, layer: int = -1
                      ) -> tuple[float, int]:
    """K and layer of the run's isometric regularizer, if any: the held-out isometric loss uses them."""
    for r in regularizers:
        if r.name == "isometric":
            return float(getattr(r, "scale")), int(getattr(r, "layer"))
    return scale, layer


class TrainingDiverged(IsorobustError):
    pass


def make_adam(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it for the device (same update, one kernel
    instead of a dozen per parameter: the optimizer step was the largest cost of a CPU step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def check_finite(loss_value: float, epoch: int, batch: int, n_batches: int) -> None:
    if not math.isfinite(loss_value):
        raise TrainingDiverged(
            f"loss is {loss_value} at epoch {epoch + 1}, batch {batch + 1}/{n_batches}; "
            f"likely cause: reg.weight or trainer.lr too large"
        )


@dataclass
class StandardTrainer:
    """Adam on CE + Σ weight·regularizer, one shuffled pass over the training set per epoch.

    Writes ``checkpoint.pt`` (model, optimizer, shuffling RNG, history) after every epoch, so
    ``resume=True`` continues an interrupted run to the same numbers as an uninterrupted one.
    """

    epochs: int = 5
    batch_size: int = 100
    lr: float = 1e-3
    resume: bool = False
    name: str = "standard"
    progress: bool | None = None  # None: a bar on a terminal only
    history: list[dict[str, Any]] = field(default_factory=list)
    position: float = 0.0  # epochs of training done, updated every batch

    def fit(
        self,
        model: MLP,
        data: ImageDataset,
        regularizers: Sequence[Regularizer] | None,
        seed: int,
        run_dir: Path,
        monitor_scale: float = 10.0,
        monitor_layer: int = -1,
    ) -> list[dict[str, Any]]:
        regularizers = list(regularizers or [])
        input_grad = any(r.needs_input_grad for r in regularizers)
        monitor_scale, monitor_layer = isometric_monitor(regularizers, monitor_scale, monitor_layer)
        train = data.train
        optimizer, shuffle, start_epoch, ckpt_path = self._begin(model, seed, run_dir)
        n_batches = math.ceil(len(train) / self.batch_size)
        for epoch in range(start_epoch, self.epochs):
            model.train()
            t0 = time.perf_counter()
            ce_sum, reg_sums = 0.0, {r.name: 0.0 for r in regularizers}
            bar = self._batches(len(train), shuffle, train.x.device, epoch)
            for b, idx in bar:
                self.position = epoch + b / n_batches  # epochs done so far (schedules read it)
                batch = train.take(idx)
                x, y = self.training_inputs(model, batch.x, batch.y), batch.y
                if input_grad:
                    x = x.detach().requires_grad_(True)
                logits, features = model.forward_features(x)
                ce = F.cross_entropy(logits, y)
                loss = ce
                for r in regularizers:
                    term = r(x, logits, features, y)
                    loss = loss + r.weight * term
                    reg_sums[r.name] += term.item()
                check_finite(loss.item(), epoch, b, n_batches)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ce_sum += ce.item()
                if b % 50 == 0:
                    bar.set_postfix(ce=f"{ce_sum / (b + 1):.3f}", **{n: f"{v / (b + 1):.3f}" for n, v in reg_sums.items()})
            test = clean_metrics(model, data.test, self.batch_size, monitor_scale, monitor_layer)
            record = {
                "epoch": epoch + 1,
                "train_cross_entropy": ce_sum / n_batches,
                "train_isometric_loss": None,  # kept when the run has no isometric term
                **{f"train_{name}_loss": total / n_batches for name, total in reg_sums.items()},
                "test_accuracy": test["accuracy"],
                "test_cross_entropy": test["cross_entropy"],
                "test_isometric_loss": test["isometric_loss"],
                "seconds": time.perf_counter() - t0,
            }
            self.history.append(record)
            log.info(
                "epoch %d/%d  train CE %.4f  %s  test acc %.4f  (%.1fs)",
                epoch + 1, self.epochs, record["train_cross_entropy"],
                "  ".join(f"{n} {v / n_batches:.4f}" for n, v in reg_sums.items()) or "no regularizer",
                record["test_accuracy"], record["seconds"],
            )
            self._save_checkpoint(ckpt_path, epoch, model, optimizer, shuffle)
        model.eval()
        return self.history

    def training_inputs(self, model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The inputs a step trains on: the clean batch here; adversarial examples in AdversarialTrainer."""
        return x

    def _begin(self, model: torch.nn.Module, seed: int, run_dir: Path
               ) -> tuple[torch.optim.Optimizer, torch.Generator, int, Path]:
        """Optimizer, shuffling RNG, first epoch to run and checkpoint path (restored when resuming)."""
        optimizer = make_adam(model, self.lr)
        shuffle = torch.Generator().manual_seed(seed)
        ckpt_path = run_dir / CHECKPOINT_NAME
        start_epoch = 0
        if self.resume and ckpt_path.exists():
            start_epoch = self._restore(ckpt_path, model, optimizer, shuffle)
            log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)
        return optimizer, shuffle, start_epoch, ckpt_path

    def _batches(self, n: int, shuffle: torch.Generator, device: torch.device, epoch: int) -> tqdm:
        """(batch number, sample indices) of one shuffled epoch, behind a progress bar."""
        order = torch.randperm(n, generator=shuffle).to(device)
        batches = [(b, order[start : start + self.batch_size]) for b, start in enumerate(range(0, n, self.batch_size))]
        return tqdm(batches, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                    disable=None if self.progress is None else not self.progress)

    def _save_checkpoint(self, path: Path, epoch: int, model: torch.nn.Module,
                         optimizer: torch.optim.Optimizer, shuffle: torch.Generator) -> None:
        io.save_torch(path, {
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "shuffle_rng": shuffle.get_state(),
            "history": self.history,
        })

    def _restore(self, path: Path, model: MLP, optimizer: torch.optim.Optimizer, shuffle: torch.Generator) -> int:
        state = io.load_torch(path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            shuffle.set_state(state["shuffle_rng"])
            self.history = list(state["history"])
            return int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise io.CheckpointError(f"cannot resume from {path}: {str(exc).splitlines()[0]}") from None
