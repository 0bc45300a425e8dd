"""What the ε sweep and the attack checks actually do, on stub attacks whose every call is recorded.

The other attack tests compare real attacks with each other, which holds for many wrong sweeps
too. Here a stub attack breaks exactly the samples it is told to (sample ids are stored in the
input), so the sweep's bookkeeping is checked sample by sample: who is attacked at each ε, whether
a break persists, whether restarts and ``cumulative=False`` are honoured. Then the real attacks:
inside their ε-ball and [0, 1]; PGD at least as strong as FGSM; and the PGD checks firing.
"""
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from isorobust.attacks.base import FGSM, L2PGD, Attack, LinfPGD, frozen, robust_accuracy_curve, robust_masks
from isorobust.attacks.autoattack import Square
from isorobust.checks import attack_checks, noise
from isorobust.attacks.paper import PaperFGSM
from tests.conftest import brightest_row_data, fit_tiny_mlp

# --- stub attacks on a step-function model ----------------------------------------------------------

N = 10  # samples 0..8 are classified correctly, sample 9 is not
WRONG = 9


class Threshold(nn.Module):
    """Class 1 iff feature 1 exceeds 0.5, else class 0: a step function of the input."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(1, 1)  # a parameter, so that ``frozen`` has something to freeze

    def forward(self, x):
        s = x[:, 1:2] - 0.5
        return torch.cat([-s, s], dim=1)


def stub_data():
    x = torch.zeros(N, 2)
    x[:, 0] = torch.arange(N, dtype=torch.float32)  # the sample's id travels with it
    x[WRONG, 1] = 1.0  # misclassified before any attack
    return x, torch.zeros(N, dtype=torch.long)


@dataclass
class Stub(Attack):
    """Breaks sample ``i`` at ε when ``breaks[ε][i]`` ≤ the number of times it was attacked at ε.

    ``breaks[ε] = {i: 1}``: broken at the first attempt; ``{i: 2}``: only from the second attempt
    (a restart) on. Records the ids of every call per ε in ``calls``.
    """

    name: str = "stub"
    breaks: dict = field(default_factory=dict)
    calls: dict = field(default_factory=lambda: defaultdict(list))
    attempts: Counter = field(default_factory=Counter)

    def perturb(self, model, x, y, epsilon):
        ids = x[:, 0].long().tolist()
        assert torch.equal(y, torch.zeros_like(y)), "labels must travel with their samples"
        self.calls[epsilon].append(ids)
        adv = x.clone()
        for row, i in enumerate(ids):
            self.attempts[epsilon, i] += 1
            need = self.breaks.get(epsilon, {}).get(i)
            if need is not None and self.attempts[epsilon, i] >= need:
                adv[row, 1] = 1.0
        return adv

    def received(self, epsilon):
        return sorted(i for call in self.calls.get(epsilon, []) for i in call)


@dataclass
class IndependentStub(Stub):
    cumulative = False


@dataclass
class BatchStub(Stub):
    batch_dependent = True


def robust_ids(mask):
    return set(mask.nonzero().squeeze(1).tolist())


def sweep(attack, epsilons, batch_size=4):
    x, y = stub_data()
    return robust_masks(Threshold(), attack, x, y, epsilons, batch_size=batch_size, seed=0)


def test_sweep_attacks_only_survivors_and_a_break_persists_at_every_larger_epsilon():
    # Broken at 0.1: 1, 2; at 0.2: 3, 5. At 0.3 the stub would break nobody, and it would not
    # break 1, 2 again at 0.2 either: they must stay broken because they already are.
    stub = Stub(breaks={0.1: {1: 1, 2: 1}, 0.2: {3: 1, 5: 1}})
    correct, masks = sweep(stub, [0.0, 0.1, 0.2, 0.3])
    assert robust_ids(correct) == set(range(9))
    assert stub.received(0.0) == []  # nothing to attack inside a ball of radius 0
    assert stub.received(0.1) == list(range(9))  # the clean-correct samples, not the misclassified one
    assert stub.received(0.2) == [0, 3, 4, 5, 6, 7, 8], "the sweep attacked samples broken at a smaller ε"
    assert stub.received(0.3) == [0, 4, 6, 7, 8], "the sweep attacked samples broken at a smaller ε"
    assert all(len(call) <= 4 for calls in stub.calls.values() for call in calls)
    assert [robust_ids(m) for m in masks] == [
        set(range(9)),
        {0, 3, 4, 5, 6, 7, 8},
        {0, 4, 6, 7, 8},
        {0, 4, 6, 7, 8},  # 0.2's breaks persist although the stub breaks nobody at 0.3
    ]


def test_non_cumulative_attack_judges_each_epsilon_from_the_clean_correct_samples():
    stub = IndependentStub(breaks={0.1: {1: 1, 2: 1}, 0.2: {3: 1}})
    correct, masks = sweep(stub, [0.1, 0.2])
    assert stub.received(0.1) == list(range(9)) and stub.received(0.2) == list(range(9))
    assert robust_ids(masks[0]) == set(range(9)) - {1, 2}
    # 1 and 2 were broken at 0.1 but not at 0.2: counted robust at 0.2 (each ε on its own)
    assert robust_ids(masks[1]) == set(range(9)) - {3}


@pytest.mark.parametrize("restarts,broken", [(1, {2}), (2, {1, 2, 4}), (3, {1, 2, 4})])
def test_restarts_attack_the_survivors_again(restarts, broken):
    # 2 falls at the first attempt, 1 and 4 only at the second.
    stub = Stub(breaks={0.1: {2: 1, 1: 2, 4: 2}}, restarts=restarts)
    _, masks = sweep(stub, [0.1])
    assert robust_ids(masks[0]) == set(range(9)) - broken
    rounds = [list(range(9))] + [sorted(set(range(9)) - {2})] * (restarts > 1) + \
             [sorted(set(range(9)) - {1, 2, 4})] * (restarts > 2)
    assert stub.received(0.1) == sorted(i for r in rounds for i in r)


def test_batch_dependent_attack_sees_fixed_batches_of_the_whole_set():
    stub = BatchStub(breaks={0.1: {1: 1}, 0.2: {2: 1}})
    _, masks = sweep(stub, [0.1, 0.2], batch_size=4)
    for eps in (0.1, 0.2):  # broken and misclassified samples included, batches as in the data
        assert stub.calls[eps] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert robust_ids(masks[0]) == set(range(9)) - {1}
    assert robust_ids(masks[1]) == set(range(9)) - {1, 2}


# --- real attacks on a small tanh MLP ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    x, y = brightest_row_data()
    return fit_tiny_mlp(0, x, y), x, y


LINF_EPS = [0.05, 0.3, 1.0]
L2_EPS = [0.3, 1.0, 3.0]


@pytest.mark.parametrize("attack", [
    FGSM(), LinfPGD(steps=20), L2PGD(steps=20), PaperFGSM(weight=10.0, scale=10.0), Square(n_queries=100),
], ids=lambda a: a.name)
def test_every_attack_stays_inside_its_ball_and_the_input_bounds(tiny, attack):
    model, x, y = tiny
    x, y = x[:100], y[:100]
    for eps in L2_EPS if attack.norm == "l2" else LINF_EPS:
        torch.manual_seed(0)
        with frozen(model):
            adv = attack.perturb(model, x, y, eps)
        assert adv.shape == x.shape and adv.dtype == x.dtype
        delta = (adv - x).flatten(1)
        dist = delta.norm(dim=1) if attack.norm == "l2" else delta.abs().amax(dim=1)
        assert dist.max().item() <= eps + 1e-6, f"{attack.name} left its {attack.norm} ball at ε={eps}"
        assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0, f"{attack.name} left [0, 1] at ε={eps}"
        assert (dist > 0.1 * eps).any(), f"{attack.name} did not move at ε={eps}"  # not vacuously inside


def test_pgd_at_least_as_strong_as_fgsm_and_stronger_somewhere(tiny):
    model, x, y = tiny
    n = x.shape[0]
    eps = [0.02, 0.05, 0.1, 0.15, 0.2]
    _, fgsm = robust_accuracy_curve(model, FGSM(), x, y, eps, batch_size=100, seed=0)
    _, pgd = robust_accuracy_curve(model, LinfPGD(), x, y, eps, batch_size=100, seed=0)  # the default PGD
    assert all(p <= f + noise(f, n) for p, f in zip(pgd, fgsm)), (pgd, fgsm)
    assert any(p < f - noise(f, n) for p, f in zip(pgd, fgsm)), f"PGD never beats FGSM: {pgd} vs {fgsm}"


@dataclass
class NoAttack(Attack):
    """Returns the inputs unchanged (a gradient-free stand-in that costs nothing)."""

    name: str = "none"

    def perturb(self, model, x, y, epsilon):
        return x.clone()


def run_attack_checks(model, x, y, eps, pgd):
    results = attack_checks(model=model, x=x, y=y, epsilons=eps, pgd=pgd, fgsm=FGSM(), gradient_free=NoAttack(),
                            surrogate=None, batch_size=100, seed=0)
    return {r.check: r for r in results}


@pytest.fixture(scope="module")
def wide():
    """brightest_row_data's rule on 4 rows of 50 pixels: in 200 dimensions a PGD step moves the
    loss much more than a random start does, so extra steps, not restarts, make the larger budget."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 4, 50, generator=g)
    y = x.sum(dim=3).squeeze(1).argmax(dim=1)
    return fit_tiny_mlp(0, x, y), x, y


def test_pgd_converged_fails_for_a_one_step_pgd(wide):
    # One step of ε/4 breaks nothing at ε = 0.02, 0.03 (FGSM breaks a third or more); 4 steps × 3
    # restarts break many. 1 step × 3 restarts, or the same 1-step PGD again, would break none.
    model, x, y = wide
    eps = [0.02, 0.03]
    one_step = LinfPGD(steps=1, rel_stepsize=0.25)
    _, base = robust_accuracy_curve(model, one_step, x, y, eps, batch_size=100, seed=0)
    _, fgsm = robust_accuracy_curve(model, FGSM(), x, y, eps, batch_size=100, seed=0)
    assert all(b > f + noise(f, x.shape[0]) for b, f in zip(base, fgsm)), "1 step should be measurably weak here"
    results = run_attack_checks(model, x, y, eps, one_step)
    assert not results["pgd_converged"].passed, results["pgd_converged"].line()
    # the larger budget lowered accuracy, so it certainly did not raise it
    check = results["more_steps_and_restarts_never_raise_accuracy"]
    assert check.passed, check.line()


@dataclass
class UnderstatedPGD(LinfPGD):
    """Claims one step, runs a 100-step PGD; its '12× larger budget' (the check builds it with
    dataclasses.replace, so the same class with steps=4) runs 4 short constant steps: weaker."""

    def perturb(self, model, x, y, epsilon):
        if self.steps == 1:
            return LinfPGD(steps=100, rel_stepsize=0.05).perturb(model, x, y, epsilon)
        return LinfPGD(steps=self.steps, rel_stepsize=0.01 / 0.3).perturb(model, x, y, epsilon)


def test_more_steps_check_fails_when_the_larger_budget_raises_accuracy(tiny):
    # The check's larger budget is built from the checked PGD's own settings, so a real PGD never
    # outdoes it by more than noise (a genuine 1-step PGD passes this check, see above); a PGD
    # stronger than its settings say stands in for an evaluation whose larger budget is weaker.
    model, x, y = tiny
    results = run_attack_checks(model, x, y, [0.05, 0.1], UnderstatedPGD(steps=1))
    check = results["more_steps_and_restarts_never_raise_accuracy"]
    assert not check.passed, check.line()
    assert results["pgd_converged"].passed, results["pgd_converged"].line()
