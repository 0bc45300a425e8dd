"""Branch and bound on hidden neurons: α-CROWN at the root, then splits of pre-activation intervals.

A sub-domain is the part of the ball where some hidden neurons' pre-activations are confined to smaller
intervals than the root's (after a split at p: z ≤ p in one child, z ≥ p in the other; the two cover the
parent). Each sub-domain is bounded with

- its own intervals imposed: the split neuron's lines are drawn on its smaller interval (for tanh, split
  at 0, each half is convex or concave and its lines close in on it), and later layers' boxes are
  intersected with IBP from the new interval;
- β-CROWN's multipliers (Wang et al. 2021): for x in the sub-domain, margin(x) ≥ margin(x) − β⁺(z − l) −
  β⁻(u − z) for any β ≥ 0, so the split constraints enter the back-substitution as terms on z's
  coefficient, optimised with the lines' α by gradient ascent. Any β ≥ 0 and any α in range is a proof.

A margin proved on a domain stays proved on its children (they are subsets). The neuron to split is the one
with the largest |λ|·gap: λ its coefficient in the back-substitution of the worst margin still open, gap
the largest distance between its two lines on its interval (BaBSR's estimate of how much looseness it
adds, Bunel et al. 2020, for lines instead of ReLU's intercept). The image ends

- **verified**: every sub-domain proved;
- **falsified**: a point of the ball that the model misclassifies, checked by a forward pass (PGD from
  random starts at the root, then from each open sub-domain's minimiser of its linear bound);
- **unknown**: ``timeout`` seconds or ``max_domains`` sub-domains spent.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from isorobust.metrics.clean import logit_margin

from .alpha_crown import AlphaCrown, AlphaOptions, backward_bound, project
from .crown import _backsubstitute, _lines, crown
from .network import split_front
from .ibp import input_box, monotone_box
from .relaxations import initial_parameters, relaxation

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"


@dataclass(frozen=True)
class BabOptions:
    """``certify.bab``: the budget per image and the optimisation of each batch of sub-domains."""

    timeout: float = 20.0  # seconds per image, root included
    max_domains: int = 20000  # sub-domains bounded per image
    batch: int = 64  # open sub-domains split at once (each gives two)
    iterations: int = 10  # α/β steps per batch of sub-domains
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    attack_steps: int = 50  # PGD steps of the search for a counterexample (random starts at the root)
    attack_restarts: int = 5


@dataclass
class BabOutcome:
    status: str  # VERIFIED, FALSIFIED or UNKNOWN
    domains: int  # sub-domains bounded
    seconds: float
    counterexample: Tensor | None = None  # (1, ...) a misclassified point of the ball (FALSIFIED)


def misclassified(model: nn.Module, points: Tensor, y: int) -> Tensor | None:
    """The first of ``points`` (N, ...) the model does not classify as ``y``, by a forward pass, or None."""
    with torch.no_grad():
        wrong = (model(points).argmax(dim=1) != y).nonzero()
    return None if wrong.numel() == 0 else points[wrong[0, 0]][None]


def pgd_counterexample(model: nn.Module, starts: Tensor, y: int, lower: Tensor, upper: Tensor, steps: int) -> Tensor | None:
    """Sign-gradient ascent of the largest wrong logit minus the true one from each start, inside the box
    [lower, upper] (the ball ∩ [0, 1]); step sizes fall from a quarter of the box's half-width to 0. Returns
    a point the model misclassifies (checked by a forward pass), or None."""
    x = starts.clone()
    half = (upper - lower) / 2
    for step in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            labels = torch.full((logits.shape[0],), y, dtype=torch.long, device=logits.device)
            loss = -logit_margin(logits, labels).sum()
            grad, = torch.autograd.grad(loss, x)
        with torch.no_grad():
            size = 0.5 * half * (1 - step / steps) + 1e-3 * half
            x = torch.minimum(torch.maximum(x + size * grad.sign(), lower), upper)
            found = misclassified(model, x, y)
            if found is not None:
                return found
    return None


class Domains:
    """Sub-domains of one image as batched tensors (leading dimension: the sub-domain)."""

    def __init__(self, lower: list[Tensor], upper: list[Tensor], alpha: list[Tensor | None],
                 beta: list[Tensor], bounds: Tensor):
        self.lower, self.upper, self.alpha, self.beta = lower, upper, alpha, beta
        self.bounds = bounds  # (D, R) the best lower bound of each margin on the domain (its parents' count)
        self.fresh: list[Tensor | None] | None = None  # after a split: CROWN's lines on the new intervals

    @property
    def proved(self) -> Tensor:
        return self.bounds > 0

    @property
    def worst(self) -> Tensor:
        """(D,) the smallest bound of a margin still open."""
        return self.bounds.masked_fill(self.proved, float("inf")).min(dim=1).values

    def __len__(self) -> int:
        return int(self.bounds.shape[0])

    def take(self, index: Tensor) -> Domains:
        pick = lambda t: None if t is None else (t[:, index] if t.dim() == 4 else t[index])
        return Domains([t[index] for t in self.lower], [t[index] for t in self.upper],
                       [pick(a) for a in self.alpha], [b[index] for b in self.beta], self.bounds[index])

    @staticmethod
    def cat(parts: Sequence[Domains]) -> Domains:
        join = lambda ts: None if ts[0] is None else torch.cat(ts, dim=1 if ts[0].dim() == 4 else 0)
        n = len(parts[0].lower)
        return Domains([torch.cat([p.lower[j] for p in parts]) for j in range(n)],
                       [torch.cat([p.upper[j] for p in parts]) for j in range(n)],
                       [join([p.alpha[j] for p in parts]) for j in range(n)],
                       [torch.cat([p.beta[j] for p in parts]) for j in range(n)],
                       torch.cat([p.bounds for p in parts]))


class BranchAndBound:
    """Branch and bound for one image (``run``)."""

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float,
                 options: BabOptions, alpha: AlphaOptions):
        self.model, self.layers, self.x, self.y, self.eps = model, layers, x, y, eps
        self.options, self.alpha_options = options, alpha
        self.label = int(y[0])
        self.box = input_box(x, eps)

    def run(self) -> BabOutcome:
        t0 = time.perf_counter()
        done = lambda status, domains, cx=None: BabOutcome(status, domains, time.perf_counter() - t0, cx)
        found = misclassified(self.model, self.x, self.label)
        if found is not None:
            return done(FALSIFIED, 0, found)
        lower, upper = self.box
        starts = lower + (upper - lower) * torch.rand((self.options.attack_restarts, *self.x.shape[1:]),
                                                      generator=torch.Generator().manual_seed(0)).to(self.x)
        found = pgd_counterexample(self.model, torch.cat([self.x, starts]), self.label, lower, upper,
                                   self.options.attack_steps)
        if found is not None:
            return done(FALSIFIED, 0, found)
        base = crown(self.layers, self.x, self.y, self.eps)
        if not base.boxes:
            return done(VERIFIED if bool((base.margins > 0).all()) else UNKNOWN, 1)
        with torch.enable_grad():
            root = AlphaCrown(base, self.y, self.alpha_options)
            margins, boxes = root.run()
        self.solver, self.base = root, base  # the network's constants (detached weights, specification, input box)
        # the sub-domains' minimisers are points of the dense chain's input: inputs of the model only
        # without a conv front end (there, only the PGD at the root searches for counterexamples)
        self.dense_input = base.input_lower.shape[1] == self.x[0].numel() and not split_front(self.layers)[0]
        self.root_boxes = boxes
        proved = margins > 0
        if bool(proved.all()):
            return done(VERIFIED, 1)
        acts = root.acts
        domains = Domains([b[0].detach() for b in boxes], [b[1].detach() for b in boxes],
                          [p.detach().clone() if p is not None else None for p in root.parameters[root.depth]],
                          # β per layer, (D, 2, R, n): [:, 0] prices z ≥ l (a raised lower bound), [:, 1] z ≤ u
                          [margins.new_zeros(1, 2, margins.shape[1], b[0].shape[1]) for b in boxes], margins)
        count, rounds = 1, 0
        while len(domains):
            rounds += 1
            if time.perf_counter() - t0 > self.options.timeout or count >= self.options.max_domains:
                return done(UNKNOWN, count)
            order = domains.worst.argsort()
            batch, rest = domains.take(order[: self.options.batch]), domains.take(order[self.options.batch:])
            children = self.split(batch, acts)
            children.bounds, minimisers = self.bound(children, acts)
            count += len(children)
            open_ = (~children.proved.all(dim=1)).nonzero()[:, 0]
            if open_.numel() and self.dense_input:
                found = misclassified(self.model, minimisers[open_], self.label)
                if found is None and rounds % 4 == 0:  # now and then, PGD from the open domains' minimisers
                    found = pgd_counterexample(self.model, minimisers[open_[:16]], self.label, lower, upper,
                                               max(5, self.options.attack_steps // 5))
                if found is not None:
                    return done(FALSIFIED, count, found)
            domains = Domains.cat([rest, children.take(open_)]) if len(rest) else children.take(open_)
        return done(VERIFIED, count)

    # -- splitting ------------------------------------------------------------------------------------

    def split(self, parents: Domains, acts: Sequence[nn.Module | None]) -> Domains:
        """Two children per parent, split on the neuron with the largest score, at 0 where its interval
        holds 0 (tanh: each half convex or concave; ReLU: each half linear), else at its midpoint."""
        layer, neuron = self.choose(parents, acts)
        rows = torch.arange(len(parents), device=self.x.device)
        left = parents.take(torch.cat([rows, rows]))
        d = len(parents)
        for j in range(len(parents.lower)):
            here = (layer == j).nonzero()[:, 0]
            if here.numel() == 0:
                continue
            lo, up = parents.lower[j][here, neuron[here]], parents.upper[j][here, neuron[here]]
            point = torch.where((lo < 0) & (up > 0), torch.zeros_like(lo), (lo + up) / 2)
            left.upper[j][here, neuron[here]] = point  # first copy: z ≤ p
            left.lower[j][here + d, neuron[here]] = point  # second copy: z ≥ p
        for j in range(1, len(left.lower)):  # later layers: intersect with IBP from the split boxes
            weight, bias = self.solver.affines[j]
            prev_lower, prev_upper = monotone_box(acts[j - 1], left.lower[j - 1], left.upper[j - 1])
            centre, radius = (prev_upper + prev_lower) / 2, (prev_upper - prev_lower) / 2
            mid = centre @ weight.T + (bias if bias is not None else 0)
            spread = radius @ weight.abs().T
            new_lower = torch.maximum(left.lower[j], mid - spread)
            new_upper = torch.minimum(left.upper[j], mid + spread)
            left.lower[j], left.upper[j] = torch.minimum(new_lower, new_upper), torch.maximum(new_lower, new_upper)
        self.tighten(left, acts, int(layer.min()) + 1)
        # α may also start afresh, from CROWN's lines on the children's intervals (``bound`` takes the better
        # start per child): on a 2-D tanh network the parent's tangent points, pushed to the edge of a halved
        # interval, bounded one child at −3.1 where fresh ones gave −0.68 (its parent: −0.80), and on the
        # other child the parent's did better; β, the price of the splits made so far, is kept
        rows = self.solver.weight.shape[1]
        left.fresh = [None if a is None else initial_parameters(act, lo[:, None, :].expand(-1, rows, -1),
                                                                up[:, None, :].expand(-1, rows, -1))
                      for a, act, lo, up in zip(left.alpha, acts, left.lower, left.upper)]
        return left

    def tighten(self, domains: Domains, acts: Sequence[nn.Module | None], start: int) -> None:
        """CROWN again for the boxes of layers ``start`` and after, with every earlier layer's lines drawn on
        the domain's (split) intervals, intersected with what the domain had (in place). Sound on the
        domain: each of its points keeps every earlier pre-activation inside its interval. This is where
        a split pays on S-shaped networks: a tighter interval gives tighter lines, and those tighten every
        later layer; measured on 2-D tanh networks, without it branch and bound left robust images
        unknown after 5000 sub-domains."""
        count = len(domains)
        with torch.no_grad():
            first_centre, radius = self._first_centre(count), self._radius(count)
            relaxed = [_lines(acts[j], domains.lower[j], domains.upper[j]) for j in range(start)]
            for k in range(start, len(domains.lower)):
                layer = self.base.affines[k]
                n = layer.out_features
                shift = layer.bias if layer.bias is not None else layer.weight.new_zeros(n)
                bound = _backsubstitute(torch.cat([layer.weight, -layer.weight]), torch.cat([shift, -shift]), k,
                                        self.base.affines, relaxed, first_centre, radius)
                lower = torch.maximum(bound[:, :n], domains.lower[k])
                upper = torch.minimum(-bound[:, n:], domains.upper[k])
                domains.lower[k], domains.upper[k] = torch.minimum(lower, upper), torch.maximum(lower, upper)
                relaxed.append(_lines(acts[k], domains.lower[k], domains.upper[k]))

    def choose(self, domains: Domains, acts: Sequence[nn.Module | None]) -> tuple[Tensor, Tensor]:
        """(layer, neuron) per domain: the largest |λ|·gap over neurons whose interval is still wide."""
        with torch.no_grad():
            lines = [None if a is None else relaxation(a, lo[:, None, :], up[:, None, :], None)
                     for a, lo, up in zip(acts, domains.lower, domains.upper)]
            coefs: list[Tensor] = []
            weight = self.solver.weight.expand(len(domains), -1, -1)
            bias = self.solver.bias.expand(len(domains), -1)
            betas = self._betas(domains)
            backward_bound(weight, bias, self.solver.affines, lines, self._first_centre(len(domains)),
                           self._radius(len(domains)), betas, record=coefs)
            open_rows = (~domains.proved).to(weight.dtype)  # (D, R)
            scores = []
            for j, (lam, line) in enumerate(zip(coefs, lines)):
                lo, up = domains.lower[j], domains.upper[j]
                if line is None:
                    scores.append(torch.full_like(lo, float("-inf")))
                    continue
                (ls, li), (us, ui) = line
                gap = torch.maximum((us - ls)[:, 0] * lo + (ui - li)[:, 0], (us - ls)[:, 0] * up + (ui - li)[:, 0])
                weight_j = (lam.abs() * open_rows[:, :, None]).sum(dim=1)  # (D, n)
                score = weight_j * gap
                wide = (up - lo) > 1e-3
                if isinstance(acts[j], nn.ReLU):
                    wide &= (lo < 0) & (up > 0)
                scores.append(torch.where(wide, score, torch.full_like(score, float("-inf"))))
            flat = torch.cat(scores, dim=1)
            best = flat.argmax(dim=1)
            sizes = torch.tensor([s.shape[1] for s in scores], device=flat.device)
            ends = sizes.cumsum(0)
            layer = torch.searchsorted(ends, best, right=True)
            neuron = best - (ends - sizes)[layer]
        return layer, neuron

    # -- bounding ---------------------------------------------------------------------------------------

    def _first_centre(self, count: int) -> Tensor:
        return self.solver.first_centre.expand(count, -1)

    def _radius(self, count: int) -> Tensor:
        return self.solver.radius.expand(count, -1)

    def _betas(self, domains: Domains) -> list[tuple[Tensor, Tensor]]:
        """Per layer: (the terms on z's coefficient, the constant) of the split constraints' multipliers,
        zero where a neuron's interval is the root's (no constraint to price)."""
        out = []
        for j, beta in enumerate(domains.beta):  # (D, 2, R, n)
            raised = (domains.lower[j] > self.root_boxes[j][0]).to(beta.dtype)[:, None, :]
            lowered = (domains.upper[j] < self.root_boxes[j][1]).to(beta.dtype)[:, None, :]
            b_lo, b_hi = beta[:, 0].clamp(min=0) * raised, beta[:, 1].clamp(min=0) * lowered
            coef = b_hi - b_lo
            const = (b_lo * domains.lower[j][:, None, :]).sum(-1) - (b_hi * domains.upper[j][:, None, :]).sum(-1)
            out.append((coef, const))
        return out

    def _margins(self, domains: Domains, acts: Sequence[nn.Module | None], alpha: list[Tensor | None],
                 beta: list[Tensor], count: int, inputs: list[Tensor] | None = None) -> Tensor:
        """(D, R) margin bounds of the domains with lines ``alpha`` (projected in place) and multipliers ``beta``."""
        lines = []
        for j, act in enumerate(acts):
            if act is None:
                lines.append(None)
                continue
            lo, up = domains.lower[j][:, None, :], domains.upper[j][:, None, :]
            if alpha[j] is not None:
                project(act, alpha[j], lo, up)
            lines.append(relaxation(act, lo, up, alpha[j]))
        shadow = Domains(domains.lower, domains.upper, alpha, beta, domains.bounds)
        return backward_bound(self.solver.weight.expand(count, -1, -1), self.solver.bias.expand(count, -1),
                              self.solver.affines, lines, self._first_centre(count), self._radius(count),
                              self._betas(shadow), input_coef=inputs)

    def bound(self, domains: Domains, acts: Sequence[nn.Module | None]) -> tuple[Tensor, Tensor]:
        """(best margin bounds (D, R): the parents' and every α/β step's, so a split never loosens a bound;
        each domain's minimiser of its worst open margin's linear bound over the input box, a candidate
        counterexample)."""
        count = len(domains)
        alpha = [None if a is None else a.clone() for a in domains.alpha]
        fresh = domains.fresh
        if fresh is not None:  # the better start per domain: its parent's α or CROWN's lines on its intervals
            with torch.no_grad():
                pulls = []
                for start in (alpha, fresh):
                    margins = self._margins(domains, acts, start, domains.beta, count)
                    pulls.append(margins.masked_fill(domains.proved, 0.0).clamp(max=0).sum(dim=1))
                take_fresh = pulls[1] > pulls[0]
            for j, (a, f) in enumerate(zip(alpha, fresh)):
                if a is not None:
                    pick = take_fresh.view(*([1] if a.dim() == 4 else []), count, 1, 1)
                    alpha[j] = torch.where(pick, f, a)
        alpha = [None if a is None else a.requires_grad_(True) for a in alpha]
        beta = [b.clone().requires_grad_(True) for b in domains.beta]
        params = [{"params": [a for a in alpha if a is not None], "lr": self.options.lr_alpha},
                  {"params": beta, "lr": self.options.lr_beta}]
        optimizer = torch.optim.Adam(params)
        best = domains.bounds.clone()
        proved = domains.proved
        minimiser = None
        for step in range(self.options.iterations + 1):
            with torch.enable_grad():
                inputs: list[Tensor] = []
                margins = self._margins(domains, acts, alpha, beta, count, inputs)
            with torch.no_grad():
                best = torch.maximum(best, margins.detach())
                worst_row = margins.detach().masked_fill(proved, float("inf")).argmin(dim=1)
                coef = inputs[0].detach()[torch.arange(count), worst_row]  # (D, d) on the dense chain's input
                lower, upper = self.solver.base.input_lower, self.solver.base.input_upper
                minimiser = torch.where(coef > 0, lower, upper)
                if self.dense_input:
                    minimiser = minimiser.view(count, *self.x.shape[1:])
            if step == self.options.iterations or bool((best > 0).all()):
                break
            loss = -margins.masked_fill(proved, 0.0).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        domains.alpha = [None if a is None else a.detach() for a in alpha]
        domains.beta = [b.detach().clamp(min=0) for b in beta]
        return best, minimiser


def branch_and_bound(model: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float,
                     options: BabOptions = BabOptions(), alpha: AlphaOptions = AlphaOptions()) -> BabOutcome:
    """One image (x: (1, ...), y: (1,)) at radius ``eps``: verified, falsified or unknown (module docstring)."""
    was_training = model.training
    model.eval()
    try:
        return BranchAndBound(model, layers, x, y, float(eps), options, alpha).run()
    finally:
        model.train(was_training)
