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
from isorobust.metrics.clean import clean_metrics
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
            wanted = getattr(r, "layer")
            # several layers (a list, or "all"): the held-out loss follows the last of them
            last = -1 if wanted == "all" else wanted if isinstance(wanted, int) else list(wanted)[-1]
            return float(getattr(r, "scale")), int(last)
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
    ``eval_every=N``: the test metrics, the log line, the history record and the checkpoint come every
    N epochs and after the last one (full-batch runs of thousands of one-step epochs, e.g. the torus,
    would otherwise spend more time on them than on training); resuming restarts from the last one.
    """

    epochs: int = 5
    batch_size: int = 100
    lr: float = 1e-3
    resume: bool = False
    eval_every: int = 1
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
        """Train ``model`` in place; returns the history (one record per evaluated epoch).

        The one epoch loop of every trainer: ``step_loss`` (what a step minimises) and
        ``epoch_record`` (what an evaluated epoch reports) are the parts a subclass replaces.
        """
        self.prepare(model, list(regularizers or []), monitor_scale, monitor_layer)
        train = data.train
        optimizer, shuffle, start_epoch, ckpt_path = self._begin(model, seed, run_dir)
        n_batches = math.ceil(len(train) / self.batch_size)
        every = max(1, int(self.eval_every))
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.epochs):
            model.train()
            sums: dict[str, float] = {}
            bar = self._batches(len(train), shuffle, train.x.device, epoch)
            for b, idx in bar:
                self.position = epoch + b / n_batches  # epochs done so far (schedules read it)
                batch = train.take(idx)
                loss, terms = self.step_loss(model, batch.x, batch.y)
                check_finite(loss.item(), epoch, b, n_batches)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                if b % 50 == 0:
                    bar.set_postfix(**{n: f"{v / (b + 1):.3f}" for n, v in sums.items()})
            if (epoch + 1) % every and epoch + 1 < self.epochs:
                continue  # train_* of a record: its own epoch; seconds: since the previous record
            means = {name: total / n_batches for name, total in sums.items()}
            record = {"epoch": epoch + 1, **self.epoch_record(model, data, means),
                      "seconds": time.perf_counter() - t0}
            self.history.append(record)
            log.info("epoch %d/%d  %s  (%.1fs)", epoch + 1, self.epochs,
                     "  ".join(f"{n} {v:.4f}" for n, v in means.items()) + f"  test acc {record['test_accuracy']:.4f}",
                     record["seconds"])
            self._save_checkpoint(ckpt_path, epoch, model, optimizer, shuffle)
            t0 = time.perf_counter()
        model.eval()
        return self.history

    def prepare(self, model: MLP, regularizers: list[Regularizer], monitor_scale: float, monitor_layer: int) -> None:
        """Per-fit settings the steps and records read."""
        self._regularizers = regularizers
        self._input_grad = any(r.needs_input_grad for r in regularizers)
        self._monitor = isometric_monitor(regularizers, monitor_scale, monitor_layer)

    def step_loss(self, model: MLP, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one minibatch, and its named terms (unweighted) for the epoch's averages."""
        x = self.training_inputs(model, x, y)
        if self._input_grad:
            x = x.detach().requires_grad_(True)
        logits, features = model.forward_features(x)
        ce = F.cross_entropy(logits, y)
        loss, terms = ce, {"cross_entropy": ce}
        for r in self._regularizers:
            term = r(x, logits, features, y)
            loss = loss + r.weight * term
            terms[r.name] = term
        return loss, terms

    def epoch_record(self, model: MLP, data: ImageDataset, means: dict[str, float]) -> dict[str, Any]:
        """The history record of an evaluated epoch (``epoch`` and ``seconds`` are added by ``fit``)."""
        test = clean_metrics(model, data.test, self.batch_size, *self._monitor)
        return {
            "train_cross_entropy": means["cross_entropy"],
            "train_isometric_loss": None,  # kept when the run has no isometric term
            **{f"train_{r.name}_loss": means[r.name] for r in self._regularizers},
            "test_accuracy": test["accuracy"],
            "test_cross_entropy": test["cross_entropy"],
            "test_isometric_loss": test["isometric_loss"],
        }

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
