"""Attack progress (isorobust.attacks.progress): saved after every ε, taken up after an interruption with the
same masks as a run that was not interrupted, never taken up for another job."""
from dataclasses import dataclass

import pytest
import torch

from isorobust.attacks.base import Attack, AttackCost, LinfPGD, robust_masks
from isorobust.attacks.progress import AttackProgress, ProgressFolder, fingerprint

EPS = [0.05, 0.1, 0.15, 0.2]


@dataclass
class RandomCorners(Attack):
    """A random corner of the ε-ball: its outcome depends on every random draw, so a resumed run that did not
    restore the generators would show it."""

    name: str = "corners"

    def perturb(self, model, x, y, epsilon):
        return (x + epsilon * torch.randn_like(x).sign()).clamp(0.0, 1.0)


@dataclass
class StopsAt(Attack):
    """``inner``, interrupted (KeyboardInterrupt, as SIGINT) when it reaches the radius ``stop_at``."""

    inner: Attack | None = None
    stop_at: float = 0.0

    def __post_init__(self):
        self.name, self.restarts = self.inner.name, self.inner.restarts

    def perturb(self, model, x, y, epsilon):
        if epsilon >= self.stop_at:
            raise KeyboardInterrupt
        return self.inner.perturb(model, x, y, epsilon)


def masks_and_costs(model, x, y, attack, progress=None, seed=0):
    costs: list[AttackCost] = []
    correct, masks = robust_masks(model, attack, x, y, EPS, 64, seed, costs, progress)
    return correct, masks, costs


@pytest.mark.parametrize("attack", [RandomCorners(restarts=3), LinfPGD(steps=5, rel_stepsize=0.25)],
                         ids=["random-corners", "pgd"])
def test_an_interrupted_attack_goes_on_to_the_same_masks(tiny, tmp_path, attack):
    model, x, y = tiny
    _, straight, straight_costs = masks_and_costs(model, x, y, attack)
    progress = AttackProgress(tmp_path, attack.name, "job")
    with pytest.raises(KeyboardInterrupt):
        masks_and_costs(model, x, y, StopsAt(inner=attack, stop_at=EPS[2]), progress)
    saved = progress.load(EPS)
    assert saved is not None and saved.epsilons == EPS[:2]  # the radii finished before the interruption
    torch.manual_seed(123)  # whatever the generator holds now, the saved state replaces it
    _, resumed, costs = masks_and_costs(model, x, y, attack, progress)
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight)) and len(resumed) == len(EPS)
    assert [c.epsilon for c in costs] == EPS and [c.samples for c in costs] == [c.samples for c in straight_costs]
    assert progress.load(EPS).epsilons == EPS


def test_the_check_is_sensitive_to_the_random_draws(tiny):
    """The masks above depend on the generator: another seed gives other masks, so a resume that did not
    restore it would fail the test above."""
    model, x, y = tiny
    attack = RandomCorners(restarts=3)
    _, a, _ = masks_and_costs(model, x, y, attack, seed=0)
    _, b, _ = masks_and_costs(model, x, y, attack, seed=1)
    assert any(not torch.equal(m, n) for m, n in zip(a, b))


def test_progress_of_another_job_or_grid_is_not_taken_up(tiny, tmp_path):
    model, x, y = tiny
    with pytest.raises(KeyboardInterrupt):
        masks_and_costs(model, x, y, StopsAt(inner=RandomCorners(), stop_at=EPS[1]),
                        AttackProgress(tmp_path, "corners", "job A"))
    assert AttackProgress(tmp_path, "corners", "job A").load(EPS) is not None
    assert AttackProgress(tmp_path, "corners", "job B").load(EPS) is None  # another fingerprint
    assert AttackProgress(tmp_path, "corners", "job A").load([0.01] + EPS) is None  # another grid
    assert AttackProgress(tmp_path, "other", "job A").load(EPS) is None  # another attack
    (tmp_path / "corners.pt").write_bytes(b"not a torch file")
    assert AttackProgress(tmp_path, "corners", "job A").load(EPS) is None  # unreadable: start over


def test_fingerprint_changes_with_the_weights_and_the_config(tiny):
    model, _, _ = tiny
    base = fingerprint({"seed": 0}, model)
    assert fingerprint({"seed": 0}, model) == base
    assert fingerprint({"seed": 1}, model) != base
    other = torch.nn.Linear(2, 2)
    assert fingerprint({"seed": 0}, other) != base


def test_folder_clear_removes_every_state(tmp_path):
    folder = ProgressFolder(tmp_path / "attack_progress", "job")
    folder.attack("pgd").path.write_bytes(b"x")
    folder.clear()
    assert not (tmp_path / "attack_progress").exists()
