"""The ``certify`` config group as an object (``Certifier``) and what one certification produced (``CertifyResult``)."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.errors import ConfigError
from isorobust.rundir import ATTACK_UPPER_BOUND, finest_level

from .alpha_crown import AlphaOptions, alpha_crown_margin_bounds
from .bab import FALSIFIED, VERIFIED, BabOptions, branch_and_bound
from .network import certifiable_layers, method_label
from .search import GridSearch, certified_radius, certify_grid, clean_predictions, in_batches

CERTIFY_METHODS = ("ibp", "crown", "alpha_crown", "bab")
log = logging.getLogger(__name__)


CERTIFIED_COLUMNS = [
    "dataset", "model", "reg", "reg_weight", "reg_scale", "seed",
    "method", "epsilon", "n_samples", "clean_accuracy", "certified_accuracy", "unknown",
]
CERTIFIED = "certified"  # the column of robustness.md


def bracket_note(attacks: pd.DataFrame, certified: pd.DataFrame) -> str:
    """Lines for robustness.md: at each L∞ radius where both sides ran, certified accuracy (a lower bound) –
    the share no attack broke (an upper bound) and the width left between them; for branch and bound the
    share it left unknown. The upper bound is on the certified images themselves where certified.csv has it
    (``attack_upper_bound``), else the worst case on the attacked ones. ``attacks``: robustness rows
    (attack, norm, epsilon, robust_accuracy); ``certified``: certified.csv's rows. Empty where no radius is
    shared."""
    linf = attacks[attacks["norm"] == "linf"]
    linf = finest_level(linf)  # hierarchical: the certified classifier is the finest level's
    lines, elsewhere = [], False
    for _, row in certified.iterrows():
        same = row.get(ATTACK_UPPER_BOUND)
        at = linf[(linf["epsilon"] - row["epsilon"]).abs() <= 1e-12]
        lower = float(row["certified_accuracy"])
        if same is not None and not pd.isna(same):
            upper = float(same)
            text = (f"ε={row['epsilon']:g}: {100 * lower:.2f} % certified – {100 * upper:.2f} % not broken by any "
                    f"attack on the same images: the truth lies between, {100 * (upper - lower):.2f} points apart")
        elif not at.empty:
            upper = at["robust_accuracy"].min()  # the worst case, else the strongest attack
            elsewhere = True
            text = (f"ε={row['epsilon']:g}: {100 * lower:.2f} % certified – {100 * upper:.2f} % not broken by any "
                    f"attack on the attacked images, {100 * (upper - lower):.2f} points apart (not the same images)")
        else:
            continue
        if row.get("method") == "bab" and "unknown" in row:
            text += f"; branch and bound left {100 * float(row['unknown']):.2f} % unknown"
        lines.append(text)
    if not lines:
        return ""
    n = int(certified["n_samples"].iloc[0])
    where = (f"certified on the first {n} test samples, attacked on {int(linf['n_samples'].max())}" if elsewhere
             else f"certified and attacked on the first {n} test samples")
    return f"- bracket ({where}): " + "; ".join(lines) + "\n"


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
    falsified: Tensor | None = None  # (E, N) bool, bab: a counterexample in the ball (misclassified: at every ε)
    tightened: dict[str, Any] | None = None  # alpha_crown/bab: per ε, what ran on how many images (the note)
    broken: Tensor | None = None  # (E, N) bool: an attack broke the image at a radius ≤ ε (misclassified too)
    attacked: list[bool] | None = None  # per ε: attacks covering all N images ran at exactly this ε
    contradicted: list[int] | None = None  # per ε: images a bound certified but an attack broke, withdrawn
    radius_contradicted: int = 0  # images whose certified radius reached a radius an attack broke them at

    @property
    def n_samples(self) -> int:
        return int(self.correct.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return self.correct.float().mean().item()

    def certified_accuracy(self) -> list[float]:
        return [m.float().mean().item() for m in self.certified]

    def attack_upper_bound(self) -> list[float | None]:
        """Per ε, the share of these same images no attack broke (an upper bound on the true robust accuracy,
        where the certified accuracy is the lower one); None where the attacks did not run at that ε on all
        of them."""
        if self.broken is None or self.attacked is None:
            return [None] * len(self.epsilons)
        return [(self.correct & ~b).float().mean().item() if ran else None
                for b, ran in zip(self.broken, self.attacked)]

    def unknown(self) -> list[float]:
        """Per ε, the share neither verified nor falsified (bab); 0 for methods that only prove."""
        if self.falsified is None:
            return [0.0] * len(self.epsilons)
        return [(~c & ~f).float().mean().item() for c, f in zip(self.certified, self.falsified)]

    @property
    def median_radius(self) -> float | None:
        """Median over all evaluated samples (misclassified and uncertified ones count as 0)."""
        return None if self.radius is None else float(np.median(self.radius.double().cpu().numpy()))

    def table(self, meta: dict[str, Any]) -> pd.DataFrame:
        """certified.csv: one row per ε with the run's identity columns."""
        rows = [{**meta, "method": self.method, "epsilon": eps, "n_samples": self.n_samples,
                 "clean_accuracy": self.clean_accuracy, "certified_accuracy": acc, "unknown": unknown}
                for eps, acc, unknown in zip(self.epsilons, self.certified_accuracy(), self.unknown())]
        upper = self.attack_upper_bound()
        if any(u is not None for u in upper):  # the bracket on the same images (NaN where no attack ran)
            for row, u in zip(rows, upper):
                row[ATTACK_UPPER_BOUND] = float("nan") if u is None else u
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
        if self.falsified is not None:
            out["unknown"] = self.unknown()
        if self.attacked is not None:
            out[ATTACK_UPPER_BOUND] = self.attack_upper_bound()
            out["contradicted"] = self.contradicted
            out["radius_contradicted"] = self.radius_contradicted
        if self.tightened is not None:
            out["tightened"] = self.tightened
        if self.radius is not None:
            searched = self.radius_bound > self.radius
            gap = (self.radius_bound - self.radius)[searched] / self.radius_bound[searched].clamp(min=self.radius_floor)
            out["radius_at_max"] = (self.radius >= max(self.epsilons)).float().mean().item()
            out["radius_resolution"] = gap.max().item() if gap.numel() else 0.0  # relative (floored), the widest
        return out

    def note(self) -> str:
        """The footnote of the ``certified`` column in robustness.md."""
        name = {"ibp": "IBP", "crown": "CROWN", "alpha_crown": "α-CROWN", "bab": "branch and bound"}.get(
            self.method, self.method)
        text = (f"- {CERTIFIED}: {name} certified accuracy, a lower bound (a proof that no input in the L∞ "
                f"ball ∩ [0, 1] changes the prediction), on the first {self.n_samples} test samples")
        if self.median_radius is not None:
            text += (f"; median certified radius {self.median_radius:.4g} (each image's to within "
                     f"{100 * self.radius_tolerance:g} %, capped at ε = {max(self.epsilons):g}"
                     + ("; CROWN's search, raised to the largest ε proved by the tighter method)"
                        if self.tightened is not None else ")"))
        if self.tightened is not None:
            text += "\n- " + self.tightened["note"]
        return text


ALPHA_DEFAULTS = asdict(AlphaOptions())  # the options' defaults live in their dataclasses, once
BAB_DEFAULTS = asdict(BabOptions())


def _number(value: Any, low: float, integer: bool = False) -> bool:
    kind = int if integer else (int, float)
    return isinstance(value, kind) and not isinstance(value, bool) and value >= low


def _options(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any],
             problems: list[str]) -> dict[str, Any]:
    """``certify.<name>`` merged over its defaults; unknown keys and bad values go to ``problems``."""
    merged = dict(defaults)
    for key, value in dict(given or {}).items():
        if key not in defaults:
            problems.append(f"certify.{name}.{key} is not an option (choose from {', '.join(defaults)})")
            continue
        merged[key] = value
    for key, value in merged.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int):
            ok, want = _number(value, 0 if key == "iterations" else 1, integer=True), "an integer >= " + (
                "0" if key == "iterations" else "1")
        else:
            ok, want = _number(value, 0) and value > 0, "a number > 0"
        if not ok:
            problems.append(f"certify.{name}.{key} must be {want} (got {value!r})")
    return merged


@dataclass
class Certifier:
    """The ``certify`` config group: ``method`` over ``epsilons`` on the first ``n_samples`` test samples,
    ``batch_size`` samples per pass, and per sample the largest certified radius in [0, max(epsilons)]
    to a relative ``radius_tolerance`` (null: no radii).

    ``alpha_crown``: CROWN first (its grid and radii), then α-CROWN (``alpha``: iterations, lr,
    intermediate) on the images CROWN did not certify at each ε and the attacks did not break (the run's, in
    ``isorobust train``; the command's own on the same images, in ``isorobust certify``).
    ``bab``: that, then branch and bound (``bab``: timeout per image, ...) on what is still open; the
    images the attacks broke count as falsified (a forward pass checked their adversarial example).
    """

    method: str = "crown"
    epsilons: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.05)
    n_samples: int | None = None
    batch_size: int = 50
    radius_tolerance: float | None = 0.02
    alpha: Mapping[str, Any] | None = None
    bab: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        problems = []
        values = [self.epsilons] if isinstance(self.epsilons, (int, float, str)) else self.epsilons
        try:
            self.epsilons = sorted({float(e) for e in values})
            if not self.epsilons or not all(0 <= e <= 1 for e in self.epsilons):
                problems.append(f"certify.epsilons must be non-empty and in [0, 1] (got {self.epsilons})")
        except (TypeError, ValueError):
            problems.append(f"certify.epsilons must be a list of numbers (got {self.epsilons!r})")
        if self.method not in CERTIFY_METHODS:
            problems.append(f"certify.method must be one of {', '.join(CERTIFY_METHODS)} (got {self.method!r})")
        if self.n_samples is not None and (not isinstance(self.n_samples, int) or self.n_samples < 1):
            problems.append(f"certify.n_samples must be null or an integer >= 1 (got {self.n_samples!r})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"certify.batch_size must be an integer >= 1 (got {self.batch_size!r})")
        if self.radius_tolerance is not None and not (
                isinstance(self.radius_tolerance, (int, float)) and not isinstance(self.radius_tolerance, bool)
                and 0 < self.radius_tolerance < 1):
            problems.append("certify.radius_tolerance must be null or a number in (0, 1) "
                            f"(got {self.radius_tolerance!r})")
        self.alpha = _options("alpha", self.alpha, ALPHA_DEFAULTS, problems)
        self.bab = _options("bab", self.bab, BAB_DEFAULTS, problems)
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @classmethod
    def problems(cls, node: Mapping[str, Any] | None) -> list[str]:
        """What is wrong with a ``certify`` config node (empty: nothing), by the rules of ``__post_init__``."""
        if not node:
            return []
        try:
            cls(**{k: v for k, v in node.items() if k != "_target_"})
        except ConfigError as exc:
            return str(exc).removeprefix("invalid configuration: ").split("; ")
        except TypeError as exc:  # a key the certifier does not have
            return [f"certify: {exc}"]
        return []

    @property
    def alpha_options(self) -> AlphaOptions:
        return AlphaOptions(**self.alpha)

    @property
    def bab_options(self) -> BabOptions:
        return BabOptions(**{k: (float(v) if k in ("timeout", "lr_alpha", "lr_beta") else v)
                             for k, v in self.bab.items()})

    def count(self, available: int) -> int:
        """How many of ``available`` test images are certified: the first ``n_samples`` (all where null)."""
        return available if self.n_samples is None else min(self.n_samples, available)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The model's layers, or a ConfigError saying why it cannot be certified (before any training)."""
        try:
            return certifiable_layers(model)
        except ValueError as exc:
            raise ConfigError(f"certify={self.method}: {exc}") from None

    def run(self, model: nn.Module, x: Tensor, y: Tensor, broken: Mapping[float, Tensor] | None = None) -> CertifyResult:
        """Certify the first ``n_samples`` of (x, y) on the model's device, in eval mode. ``broken``: per
        attack radius, the samples the attacks broke there (the first ones of x; alpha_crown/bab skip them at
        every ε at least as large; where they covered all the images certified at exactly a certified ε, the
        share they left is that ε's upper bound on the same images, ``CertifyResult.attack_upper_bound``; no
        certificate may contradict them, ``_withdraw_contradicted``)."""
        t0 = time.perf_counter()
        layers = self.layers(model)
        n = self.count(x.shape[0])
        x, y = x[:n], y[:n]
        base = "ibp" if self.method == "ibp" else "crown"
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                correct, margins = clean_predictions(model, x, y, self.batch_size)
                grid = certify_grid(layers, x, y, correct, margins, self.epsilons, base, self.batch_size)
                radius = bound = None
                evaluations = grid.evaluations
                if self.radius_tolerance is not None:
                    radius, bound, more = self._radii(layers, x, y, correct, grid, base)
                    evaluations += more
            certified, falsified, tightened = grid.certified, None, None
            attacked = self._broken(broken, n, x.device)
            if self.method in ("alpha_crown", "bab"):
                certified, tightened = self._alpha(layers, x, y, correct, certified.clone(), attacked)
                if self.method == "bab":
                    certified, falsified = self._branch(model, layers, x, y, correct, certified, attacked, tightened)
                if radius is not None:  # a proof at a grid radius is a certified radius too
                    points = torch.tensor(self.epsilons, dtype=radius.dtype, device=radius.device)
                    proved = (certified.to(radius.dtype) * points[:, None]).amax(dim=0)
                    raised = proved > radius
                    radius = torch.where(raised, proved, radius)
                    bound = torch.where(raised, torch.maximum(bound, proved), bound)
            contradicted, radius_contradicted = None, 0
            if attacked is not None:
                certified, radius, bound, contradicted, radius_contradicted = self._withdraw_contradicted(
                    certified, radius, bound, attacked, broken, n)
        finally:
            model.train(was_training)
        covered = None if not broken else [
            any(abs(r - eps) <= 1e-12 and hit.shape[0] >= n for r, hit in broken.items()) for eps in self.epsilons]
        return CertifyResult(method_label(layers, self.method), list(self.epsilons), correct, certified,
                             radius, bound, self.radius_tolerance, self.radius_floor, evaluations,
                             time.perf_counter() - t0, falsified, tightened,
                             None if attacked is None else torch.stack(attacked), covered, contradicted,
                             radius_contradicted)

    def _withdraw_contradicted(self, certified: Tensor, radius: Tensor | None, bound: Tensor | None,
                               attacked: list[Tensor], broken: Mapping[float, Tensor], n: int,
                               ) -> tuple[Tensor, Tensor | None, Tensor | None, list[int], int]:
        """An image an attack broke inside a ball its bound certified is a bug in the bound (or a margin within
        rounding of 0): the adversarial example is the proof, so the certificate is withdrawn there, at every
        larger ε (the breaks are monotone in ε), and a certified radius that reaches any radius an attack broke
        the image at (grid or not) falls to the largest grid ε still certified below it. The counts are kept
        and logged as an error. Never expected; the soundness tests hold them at zero."""
        broke = torch.stack(attacked)
        clash = certified & broke
        counts = [int(c) for c in clash.sum(dim=1)]
        certified = certified & ~broke  # changes nothing where nothing clashed
        over_radius = 0
        if radius is not None:
            points = torch.tensor(self.epsilons, dtype=radius.dtype, device=radius.device)
            limit = torch.full_like(radius, float("inf"))  # per image, the smallest radius an attack broke it at
            for r, hit in broken.items():
                m = min(n, hit.shape[0])
                hit = hit[:m].to(radius.device)
                limit[:m] = torch.where(hit, torch.clamp(limit[:m], max=float(r)), limit[:m])
            over = radius >= limit
            over_radius = int(over.sum())
            if over_radius:
                below = certified & (points[:, None] < limit[None, :])
                proved = (below.to(radius.dtype) * points[:, None]).amax(dim=0)
                radius = torch.where(over, proved, radius)
                bound = torch.where(over, torch.minimum(bound, limit), bound)
        if any(counts) or over_radius:
            log.error("UNSOUND: certificates contradicted by an attack's adversarial examples (per ε %s: %s; "
                      "certified radii reaching a broken radius: %s); withdrawn. Please report this with the run.",
                      self.epsilons, counts, over_radius)
        return certified, radius, bound, counts, over_radius

    def _broken(self, broken: Mapping[float, Tensor] | None, n: int, device: torch.device) -> list[Tensor] | None:
        """Per certify ε, the samples an attack broke at a radius ≤ ε (a point of a smaller ball lies in the
        larger one); None where no attack ran."""
        if not broken:
            return None
        out = []
        for eps in self.epsilons:
            mask = torch.zeros(n, dtype=torch.bool, device=device)
            for radius, hit in broken.items():
                if radius <= eps + 1e-12:
                    m = min(n, hit.shape[0])
                    mask[:m] |= hit[:m].to(device)
            out.append(mask)
        return out

    def _alpha(self, layers: list[nn.Module], x: Tensor, y: Tensor, correct: Tensor, certified: Tensor,
               attacked: list[Tensor] | None) -> tuple[Tensor, dict[str, Any]]:
        """α-CROWN at each ε, largest first, on the correct samples not yet certified there and not broken;
        a proof at ε counts at every smaller ε too."""
        options = self.alpha_options
        rows = []
        t0 = time.perf_counter()
        for e in range(len(self.epsilons) - 1, -1, -1):
            eps = self.epsilons[e]
            todo = correct & ~certified[e]
            skipped = 0
            if attacked is not None:
                skipped = int((todo & attacked[e]).sum())
                todo &= ~attacked[e]
            index = todo.nonzero()[:, 0]
            proved = torch.zeros(index.numel(), dtype=torch.bool, device=x.device)

            def bound(part: slice) -> None:
                picked = index[part]
                margins = alpha_crown_margin_bounds(layers, x[picked], y[picked], eps, options)
                proved[part] = margins.min(dim=1).values > 0

            t_eps = time.perf_counter()
            in_batches(index.numel(), self.batch_size, x.device, bound)
            certified[: e + 1, index[proved]] = True
            rows.append({"epsilon": eps, "alpha_crown_ran_on": int(index.numel()), "skipped_broken": skipped,
                         "alpha_crown_proved": int(proved.sum()), "alpha_crown_seconds": time.perf_counter() - t_eps})
        rows.reverse()
        ran = sum(r["alpha_crown_ran_on"] for r in rows)
        note = (f"α-CROWN ({options.iterations} steps, lr {options.lr:g}, hidden layers' boxes "
                f"{'optimised' if options.intermediate else 'from CROWN'}) ran only where CROWN had not certified"
                + (" and the attacks had not broken the image" if attacked is not None else "")
                + f": {ran} (image, ε) pairs, " + ", ".join(
                    f"ε = {r['epsilon']:g}: {r['alpha_crown_proved']} of {r['alpha_crown_ran_on']} proved"
                    for r in rows))
        return certified, {"note": note, "per_epsilon": rows, "alpha_crown_seconds": time.perf_counter() - t0}

    def _branch(self, model: nn.Module, layers: list[nn.Module], x: Tensor, y: Tensor, correct: Tensor,
                certified: Tensor, attacked: list[Tensor] | None, tightened: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Branch and bound at each ε, smallest first, on what α-CROWN left open; a counterexample at ε
        counts at every larger ε too. Misclassified samples are falsified at every ε."""
        options, alpha = self.bab_options, self.alpha_options
        falsified = (~correct)[None, :].repeat(len(self.epsilons), 1)
        if attacked is not None:
            for e in range(len(self.epsilons)):
                falsified[e:] |= (attacked[e] & ~certified[e])[None, :]
        for p in model.parameters():  # the searches differentiate w.r.t. inputs only
            p.requires_grad_(False)
        t0 = time.perf_counter()
        for e, eps in enumerate(self.epsilons):
            index = (~certified[e] & ~falsified[e]).nonzero()[:, 0]
            status = [""] * index.numel()
            domains = [0] * index.numel()

            def search(part: slice) -> None:
                for k in range(part.start, min(part.stop, index.numel())):
                    i = int(index[k])
                    outcome = branch_and_bound(model, layers, x[i : i + 1], y[i : i + 1], eps, options, alpha)
                    status[k], domains[k] = outcome.status, outcome.domains

            t_eps = time.perf_counter()
            in_batches(index.numel(), 1, x.device, search)
            verified = index[torch.tensor([s == VERIFIED for s in status], dtype=torch.bool, device=x.device)] \
                if index.numel() else index
            broke = index[torch.tensor([s == FALSIFIED for s in status], dtype=torch.bool, device=x.device)] \
                if index.numel() else index
            certified[: e + 1, verified] = True
            falsified[e:, broke] = True
            row = next(r for r in tightened["per_epsilon"] if r["epsilon"] == eps)
            row.update({"bab_ran_on": int(index.numel()), "bab_verified": int(verified.numel()),
                        "bab_falsified": int(broke.numel()), "bab_unknown": int(index.numel() - verified.numel()
                                                                                - broke.numel()),
                        "bab_domains": int(sum(domains)), "bab_seconds": time.perf_counter() - t_eps})
        for p in model.parameters():
            p.requires_grad_(True)
        tightened["bab_seconds"] = time.perf_counter() - t0
        tightened["note"] += (f"; branch and bound (timeout {options.timeout:g} s per image and ε, at most "
                              f"{options.max_domains} sub-domains) on what was left: " + ", ".join(
                                  f"ε = {r['epsilon']:g}: {r['bab_verified']} verified, {r['bab_falsified']} "
                                  f"falsified, {r['bab_unknown']} unknown of {r['bab_ran_on']}"
                                  for r in tightened["per_epsilon"]))
        return certified, falsified

    def _radii(self, layers: list[nn.Module], x: Tensor, y: Tensor, correct: Tensor,
               grid: GridSearch, method: str) -> tuple[Tensor, Tensor, int]:
        """Each sample's bracket from the grid, [largest certified ε (or 0), next ε], then the search inside
        it; certified at the largest ε: the radius is that ε (capped), nothing searched."""
        points = torch.tensor([0.0, *self.epsilons], dtype=x.dtype, device=x.device)
        capped = grid.count == len(self.epsilons)
        lower = torch.where(correct, points[grid.count], torch.zeros_like(points[grid.count]))
        upper = torch.where(correct & ~capped, points[(grid.count + 1).clamp(max=len(self.epsilons))], lower)
        return certified_radius(layers, x, y, lower, upper, grid.lower_margin, grid.upper_margin,
                                float(self.radius_tolerance), method, self.batch_size, self.radius_floor)

    @property
    def radius_floor(self) -> float:
        """Radii below 1 % of the smallest positive grid radius are resolved in absolute terms."""
        return 0.01 * min((e for e in self.epsilons if e > 0), default=1.0)
