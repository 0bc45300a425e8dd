"""The ``certify`` config group as an object (``Certifier``) and what one certification produced (``CertifyResult``)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.errors import ConfigError

from .network import certifiable_layers, method_label
from .search import METHODS, GridSearch, certified_radius, certify_grid, clean_predictions

CERTIFIED_COLUMNS = [
    "dataset", "model", "reg", "reg_weight", "reg_scale", "seed",
    "method", "epsilon", "n_samples", "clean_accuracy", "certified_accuracy",
]
CERTIFIED = "certified"  # the column of robustness.md


@dataclass
class CertifyResult:
    """What one certification produced, per sample and summed up."""

    method: str  # what was computed (``method_label``)
    epsilons: list[float]
    correct: Tensor  # (N,) bool: clean prediction correct
    certified: Tensor  # (E, N) bool, monotone in ε
    radius: Tensor | None  # (N,) largest certified ε found (0 where none), capped at max(epsilons)
    radius_bound: Tensor | None  # (N,) the smallest radius tried above it that was not certified
    radius_tolerance: float | None
    radius_floor: float = 0.0  # radii below it were resolved to tolerance · floor (absolute)
    evaluations: int = 0  # bounds computed (sample × radius), grid and radii
    seconds: float = 0.0

    @property
    def n_samples(self) -> int:
        return int(self.correct.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return self.correct.float().mean().item()

    def certified_accuracy(self) -> list[float]:
        return [m.float().mean().item() for m in self.certified]

    @property
    def median_radius(self) -> float | None:
        """Median over all evaluated samples (misclassified and uncertified ones count as 0)."""
        return None if self.radius is None else float(np.median(self.radius.double().cpu().numpy()))

    def table(self, meta: dict[str, Any]) -> pd.DataFrame:
        """certified.csv: one row per ε with the run's identity columns."""
        rows = [{**meta, "method": self.method, "epsilon": eps, "n_samples": self.n_samples,
                 "clean_accuracy": self.clean_accuracy, "certified_accuracy": acc}
                for eps, acc in zip(self.epsilons, self.certified_accuracy())]
        frame = pd.DataFrame(rows)
        return frame[CERTIFIED_COLUMNS + [c for c in frame.columns if c not in CERTIFIED_COLUMNS]]

    def summary(self) -> dict[str, Any]:
        """For metrics.json (the median radius lives here, not in certified.csv)."""
        out: dict[str, Any] = {
            "method": self.method, "n_samples": self.n_samples, "epsilons": self.epsilons,
            "certified_accuracy": self.certified_accuracy(),
            "median_radius": self.median_radius, "radius_max": max(self.epsilons),
            "radius_tolerance": self.radius_tolerance,
            "bounds_per_sample": self.evaluations / max(1, self.n_samples),
        }
        if self.radius is not None:
            searched = self.radius_bound > self.radius
            gap = (self.radius_bound - self.radius)[searched] / self.radius_bound[searched].clamp(min=self.radius_floor)
            out["radius_at_max"] = (self.radius >= max(self.epsilons)).float().mean().item()
            out["radius_resolution"] = gap.max().item() if gap.numel() else 0.0  # relative (floored), the widest
        return out

    def note(self) -> str:
        """The footnote of the ``certified`` column in robustness.md."""
        text = (f"- {CERTIFIED}: {self.method.upper() if self.method in METHODS else self.method} certified "
                f"accuracy, a lower bound (a proof that no input in the L∞ ball ∩ [0, 1] changes the "
                f"prediction), on the first {self.n_samples} test samples")
        if self.median_radius is not None:
            text += (f"; median certified radius {self.median_radius:.4g} (each image's to within "
                     f"{100 * self.radius_tolerance:g} %, capped at ε = {max(self.epsilons):g})")
        return text


@dataclass
class Certifier:
    """The ``certify`` config group: ``method`` over ``epsilons`` on the first ``n_samples`` test samples,
    ``batch_size`` samples per pass, and per sample the largest certified radius in [0, max(epsilons)]
    to a relative ``radius_tolerance`` (null: no radii)."""

    method: str = "crown"
    epsilons: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.05)
    n_samples: int | None = None
    batch_size: int = 50
    radius_tolerance: float | None = 0.02

    def __post_init__(self) -> None:
        problems = []
        values = [self.epsilons] if isinstance(self.epsilons, (int, float, str)) else self.epsilons
        try:
            self.epsilons = sorted({float(e) for e in values})
            if not self.epsilons or not all(0 <= e <= 1 for e in self.epsilons):
                problems.append(f"certify.epsilons must be non-empty and in [0, 1] (got {self.epsilons})")
        except (TypeError, ValueError):
            problems.append(f"certify.epsilons must be a list of numbers (got {self.epsilons!r})")
        if self.method not in METHODS:
            problems.append(f"certify.method must be ibp or crown (got {self.method!r})")
        if self.n_samples is not None and (not isinstance(self.n_samples, int) or self.n_samples < 1):
            problems.append(f"certify.n_samples must be null or an integer >= 1 (got {self.n_samples!r})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"certify.batch_size must be an integer >= 1 (got {self.batch_size!r})")
        if self.radius_tolerance is not None and not (
                isinstance(self.radius_tolerance, (int, float)) and not isinstance(self.radius_tolerance, bool)
                and 0 < self.radius_tolerance < 1):
            problems.append("certify.radius_tolerance must be null or a number in (0, 1) "
                            f"(got {self.radius_tolerance!r})")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The model's layers, or a ConfigError saying why it cannot be certified (before any training)."""
        try:
            return certifiable_layers(model)
        except ValueError as exc:
            raise ConfigError(f"certify={self.method}: {exc}") from None

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> CertifyResult:
        """Certify the first ``n_samples`` of (x, y) on the model's device, in eval mode."""
        t0 = time.perf_counter()
        layers = self.layers(model)
        n = x.shape[0] if self.n_samples is None else min(self.n_samples, x.shape[0])
        x, y = x[:n], y[:n]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                correct, margins = clean_predictions(model, x, y, self.batch_size)
                grid = certify_grid(layers, x, y, correct, margins, self.epsilons, self.method, self.batch_size)
                radius = bound = None
                evaluations = grid.evaluations
                if self.radius_tolerance is not None:
                    radius, bound, more = self._radii(layers, x, y, correct, grid)
                    evaluations += more
        finally:
            model.train(was_training)
        return CertifyResult(method_label(layers, self.method), list(self.epsilons), correct, grid.certified,
                             radius, bound, self.radius_tolerance, self.radius_floor, evaluations,
                             time.perf_counter() - t0)

    def _radii(self, layers: list[nn.Module], x: Tensor, y: Tensor, correct: Tensor,
               grid: GridSearch) -> tuple[Tensor, Tensor, int]:
        """Each sample's bracket from the grid, [largest certified ε (or 0), next ε], then the search inside
        it; certified at the largest ε: the radius is that ε (capped), nothing searched."""
        points = torch.tensor([0.0, *self.epsilons], dtype=x.dtype, device=x.device)
        capped = grid.count == len(self.epsilons)
        lower = torch.where(correct, points[grid.count], torch.zeros_like(points[grid.count]))
        upper = torch.where(correct & ~capped, points[(grid.count + 1).clamp(max=len(self.epsilons))], lower)
        return certified_radius(layers, x, y, lower, upper, grid.lower_margin, grid.upper_margin,
                                float(self.radius_tolerance), self.method, self.batch_size, self.radius_floor)

    @property
    def radius_floor(self) -> float:
        """Radii below 1 % of the smallest positive grid radius are resolved in absolute terms."""
        return 0.01 * min((e for e in self.epsilons if e > 0), default=1.0)


