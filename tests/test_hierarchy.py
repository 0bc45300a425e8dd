"""Label hierarchies: validation, level labels, tree distance, restricted back-propagation,
per-level tables."""
import json

import pandas as pd
import pytest
import torch

from isorobust.data import Split
from isorobust.errors import ConfigError
from isorobust.attacks.base import FGSM
from isorobust.hierarchy import Hierarchy, hierarchy_problems
from isorobust.attacks.sweep import robustness_by_level
from isorobust.metrics.hierarchy import hierarchy_metrics, mean_error_tree_distance
from isorobust.models.hierarchical import LevelReadout
from isorobust.reports.run import markdown_by_level
from isorobust.io import save_torch
from isorobust.models import load_model, model_checkpoint
from isorobust.models import HierarchicalMLP
from isorobust.training.hierarchical import level_losses, total_loss
from tests.conftest import run_cli

LEVELS = [[[0, 1, 2], [3, 4, 5]], [[0, 1], [2], [3], [4, 5]], [[0], [1], [2], [3], [4], [5]]]


def test_valid_hierarchy_maps_labels_per_level():
    h = Hierarchy(LEVELS, 6)
    y = torch.tensor([0, 2, 3, 5])
    assert h.depth == 3 and h.group_counts == [2, 4, 6]
    assert h.level_labels(y, 0).tolist() == [0, 0, 1, 1]
    assert h.level_labels(y, 1).tolist() == [0, 1, 2, 3]
    assert torch.equal(h.level_labels(y, 2), y)


def test_tree_distance_counts_levels_up_to_the_common_ancestor():
    h = Hierarchy(LEVELS, 6)
    a = torch.tensor([0, 0, 0, 0])
    b = torch.tensor([0, 1, 2, 5])
    assert h.tree_distance(a, b).tolist() == [0, 1, 2, 3]
    assert mean_error_tree_distance(h, b, a) == pytest.approx((1 + 2 + 3) / 3)  # errors only
    assert mean_error_tree_distance(h, a, a) is None


@pytest.mark.parametrize("levels, message", [
    ([[[0, 1, 2], [3, 4]], [[0], [1], [2], [3], [4], [5]]], "classes \\[5\\] are in no group"),
    ([[[0, 1, 2], [2, 3, 4, 5]], [[0], [1], [2], [3], [4], [5]]], "class 2 is in two groups"),
    ([[[0, 1, 2], [3, 4, 5]], [[2, 3], [0, 1], [4, 5]], [[0], [1], [2], [3], [4], [5]]], "does not refine level 0"),
    ([[[0, 1, 2], [3, 4, 5]], [[0, 1, 2], [3, 4, 5]]], "must be the classes themselves"),
    ([[[0, 1, 2], [3, 4, 9]], [[0], [1], [2], [3], [4], [5]]], "9 is not a class id"),
    ([[[0, 1, 2, 3, 4, 5], []], [[0], [1], [2], [3], [4], [5]]], "group 1 is empty"),
])
def test_invalid_hierarchies_are_rejected_with_a_clear_error(levels, message):
    with pytest.raises(ConfigError, match=message):
        Hierarchy(levels, 6)


def test_the_issue_example_is_not_a_refinement_and_says_so():
    levels = [[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
              [[c] for c in range(10)]]
    assert any("[4, 5] does not refine level 0" in p for p in hierarchy_problems(levels, 10))


def small_model(seed=0):
    torch.manual_seed(seed)
    return HierarchicalMLP(in_features=8, levels=LEVELS, num_classes=6, width=12, depth_per_level=2)


def snapshot(params):
    return [p.detach().clone() for p in params]


def test_model_shapes_and_layer_indices():
    model = small_model()
    logits, features = model.forward_levels(torch.rand(5, 8))
    assert [l.shape[1] for l in logits] == [2, 4, 6] and len(features) == model.num_hidden == 7
    assert [model.level_layer(b) for b in range(3)] == [2, 4, 6]
    assert torch.equal(model(torch.zeros(2, 8)), model.forward_levels(torch.zeros(2, 8))[0][-1])


def test_restricted_backprop_leaves_earlier_blocks_unchanged():
    model = small_model()
    h = Hierarchy(LEVELS, 6)
    x, y = torch.rand(30, 8), torch.arange(30) % 6
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    earlier = [p for b in (0, 1) for p in model.block_parameters(b)]
    own = model.block_parameters(2)
    before_earlier, before_own = snapshot(earlier), snapshot(own)
    ce, iso = level_losses(model, h, x, y, scale=2.0)[2]  # a step on the last level's loss only
    optimizer.zero_grad(set_to_none=True)
    (ce + 0.1 * iso).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before_earlier, snapshot(earlier)))
    assert any(not torch.equal(a, b) for a, b in zip(before_own, snapshot(own)))


def test_without_restriction_the_last_level_would_move_earlier_blocks():
    # the check above can fail: the same step on the undetached graph changes block 0
    model = small_model()
    h = Hierarchy(LEVELS, 6)
    x, y = torch.rand(30, 8), torch.arange(30) % 6
    before = snapshot(model.block_parameters(0))
    ce, _ = level_losses(model, h, x, y, scale=None, restricted=False)[2]
    ce.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, snapshot(model.block_parameters(0))))


def test_each_block_gets_exactly_its_own_levels_gradient():
    h = Hierarchy(LEVELS, 6)
    x, y = torch.rand(30, 8), torch.arange(30) % 6
    model = small_model()
    total_loss(level_losses(model, h, x, y, scale=2.0), weight=0.5).backward()
    together = {b: [p.grad.clone() for p in model.block_parameters(b)] for b in range(3)}
    for b in range(3):
        alone = small_model()
        ce, iso = level_losses(alone, h, x, y, scale=2.0)[b]
        (ce + 0.5 * iso).backward()
        for g, p in zip(together[b], alone.block_parameters(b)):
            assert torch.allclose(g, p.grad, atol=1e-6)


def test_attacks_see_the_full_graph():
    # restricted back-propagation is for training only: the input gradient of the last read-out
    # must flow through every block, or attacks on it would be weakened
    model = small_model()
    x = torch.rand(4, 8, requires_grad=True)
    LevelReadout(model, 2)(x).sum().backward()
    full = x.grad.clone()
    x.grad = None
    logits, _ = model.forward_levels(x, restricted=True)
    logits[2].sum().backward()
    assert x.grad is None  # the training graph does not reach the input at all from the last level
    assert full.abs().sum() > 0


def test_per_level_tables_and_metrics(tmp_path):
    model = small_model().eval()
    test = Split(torch.rand(40, 8), torch.arange(40) % 6)
    meta = {"dataset": "toy", "model": "hierarchical_mlp", "reg": "none", "reg_weight": 0.0, "reg_scale": 0.0, "seed": 0}
    table = robustness_by_level(model, test, {"fgsm": FGSM()}, [0.0, 0.1], 30, 16, 0, meta)
    assert list(table.columns[-2:]) == ["level", "error_tree_distance"]
    assert sorted(table["level"].unique()) == [0, 1, 2] and len(table) == 3 * 2
    h = Hierarchy(LEVELS, 6)
    for level in range(3):
        rows = table[table["level"] == level]
        expected = (LevelReadout(model, level)(test.x[:30]).argmax(1) == h.level_labels(test.y[:30], level)).float().mean()
        assert rows["clean_accuracy"].iloc[0] == pytest.approx(expected.item())
    assert table[table["level"] < 2]["error_tree_distance"].isna().all()
    assert table[table["level"] == 2]["error_tree_distance"].between(1, 3).all()
    md = markdown_by_level(table)
    assert md.count("## Level") == 3 and "mean tree distance" in md
    metrics = hierarchy_metrics(model, test, 16)["hierarchy"]
    assert [l["groups"] for l in metrics["per_level"]] == [2, 4, 6]
    # the checkpoint rebuilds the same model (weights_only)
    save_torch(tmp_path / "model.pt", model_checkpoint(model))
    again = load_model(tmp_path / "model.pt")
    assert isinstance(again, HierarchicalMLP) and torch.equal(again(test.x), model(test.x))


def test_cli_rejects_a_bad_hierarchy_and_a_model_without_one(tmp_path):
    bad = run_cli("train", "dataset=torus", "+hierarchy=mnist_3level", "hierarchy.levels=[[[0,1],[2]],[[0],[1],[2],[3]]]",
                  f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert bad.returncode == 2 and "isorobust: error: invalid hierarchy" in bad.stderr and "[3] are in no group" in bad.stderr
    alone = run_cli("train", "dataset=torus", "model=hierarchical_mlp", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert alone.returncode == 2 and "needs a label hierarchy" in alone.stderr
    assert not (tmp_path / "a" / "model.pt").exists() and not (tmp_path / "b" / "model.pt").exists()


def test_cli_hierarchical_torus_run_and_reattack(tmp_path):
    # torus with 4 classes ([2, 2] blocks): level 0 = the two u-halves, level 1 = the blocks
    run_dir = tmp_path / "run"
    proc = run_cli("train", "dataset=torus", "dataset.grid=12", "dataset.test_grid=16", "+hierarchy=mnist_3level",
                   "hierarchy.levels=[[[0,1],[2,3]],[[0],[1],[2],[3]]]", "model.depth_per_level=1",
                   "+reg=isometric", "trainer.epochs=2", "attack=fgsm", "eval.epsilons=[0.05]",
                   "eval.isometry_max_per_class=30", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(run_dir / "robustness.csv")
    assert sorted(table["level"].unique()) == [0, 1]
    iso = pd.read_csv(run_dir / "isometry.csv", dtype={"class": str})
    assert set(iso["level"].dropna()) == {0, 1}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["hierarchy"]["per_level"]) == 2 and len(metrics["history"][-1]["levels"]) == 2
    again = run_cli("attack", f"run={run_dir}", f"hydra.run.dir={tmp_path / 'attack'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "attack" / "robustness.csv"), table)
