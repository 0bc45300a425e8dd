"""dataset=torus: shapes, determinism, contiguous class blocks, boundary distances, near/far isometry."""
import json
import math

import pandas as pd
import pytest
import torch

from isorobust.data import load_torus
from isorobust.data.torus import block_labels, boundary_distance, torus_points
from isorobust.errors import ConfigError
from isorobust.evaluation.isometry_regions import boundary_regions, local_ratios
from tests.conftest import run_cli


def test_shapes_range_and_balanced_classes():
    data = load_torus(grid=8, test_grid=16, class_grid=(2, 3))
    assert data.input_shape == (3,) and data.num_classes == 6
    assert data.train.x.shape == (64, 3) and data.test.x.shape == (256, 3)
    assert data.test_boundary_distance.shape == (256,)
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert 0 <= split.x.min() and split.x.max() <= 1
    assert set(data.train.y.tolist()) == set(range(6))


def test_deterministic_from_the_seed():
    a, b, c = load_torus(grid=6, test_grid=12, seed=3), load_torus(grid=6, test_grid=12, seed=3), load_torus(grid=6, test_grid=12, seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_training_points_lie_on_the_torus_up_to_one_uniform_scale():
    R, r = 1.0, 0.66
    data = load_torus(grid=10, test_grid=20, major_radius=R, minor_radius=r, noise=0.0)
    extent = R + r  # noise 0: p' = 1/2 + p / (2 (R + r))
    p = (data.train.x.double() - 0.5) * 2 * extent
    # (sqrt(x² + y²) − R)² + z² = r² on the torus
    residual = (torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - R) ** 2 + p[:, 2] ** 2 - r * r
    assert residual.abs().max() < 1e-5


def test_classes_are_contiguous_blocks_and_boundary_distance_is_zero_on_edges():
    u = torch.tensor([0.1, 3.0, 3.3, 6.2], dtype=torch.float64)
    v = torch.tensor([0.1, 0.1, 4.0, 4.0], dtype=torch.float64)
    assert block_labels(u, v, (2, 2)).tolist() == [0, 0, 3, 3]
    dist = boundary_distance(torch.tensor([math.pi, 1.0]), torch.tensor([1.0, math.pi / 2]), (2, 2), 1.0, 0.5)
    assert dist[0] == pytest.approx(0.0, abs=1e-6)  # u = π is an edge between u-blocks
    assert dist[1] == pytest.approx(min(1.0 * 1.0, 0.5 * math.pi / 2), rel=1e-6)
    p = torus_points(torch.tensor([0.0]), torch.tensor([0.0]), 1.0, 0.5)
    assert torch.allclose(p, torch.tensor([[1.5, 0.0, 0.0]]))


def test_bad_parameters_are_one_config_error():
    with pytest.raises(ConfigError, match="minor_radius.*class_grid"):
        load_torus(minor_radius=2.0, class_grid=(1, 1))


def test_near_far_regions_and_local_ratios():
    d = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    regions = boundary_regions(d)
    assert regions["near"].tolist() == [True, True, False, False, False, False]
    assert regions["far"].tolist() == [False, False, False, False, True, True]
    x = torch.randn(30, 3)
    y = torch.arange(30) % 2
    assert torch.allclose(local_ratios(x, 2 * x, y, scale=0.5), torch.ones(30, dtype=torch.float64))


def test_torus_run_writes_near_far_isometry_and_plot(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "dataset=torus", "dataset.grid=16", "dataset.test_grid=24", "trainer.epochs=2",
                   "model.depth=1", "attack=fgsm", "eval.epsilons=[0.05]", "eval.isometry_max_per_class=50",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(run_dir / "isometry.csv", dtype={"class": str})
    assert set(table["region"].dropna()) == {"near", "far"} and set(table["layer"]) == {0, 1}
    assert (table[table["class"] != "all"]["n_points"] <= 50).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {(r["layer"], r["region"]) for r in metrics["isometry"]["near_far"]} == {(0, "near"), (0, "far"), (1, "near"), (1, "far")}
    assert (run_dir / "isometry_boundary.png").read_bytes()[:4] == b"\x89PNG"
