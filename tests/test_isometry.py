"""Isometry figures on cases with a known answer, and the per-layer table of a model."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from isorobust.metrics.isometry import isometry_figures, measure_isometry, pair_distances, summarise
from isorobust.models import MLP


def test_exact_scaled_isometry_gives_scale_correlation_one_and_no_distortion():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 20, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    z = (x @ q) / 4.0 + 3.0  # rotation, scaling by 1/4 and a shift: an exact scaled isometry
    fig = isometry_figures(pair_distances(x), pair_distances(z))
    assert fig["n_pairs"] == 60 * 59 // 2
    assert fig["scale"] == pytest.approx(4.0, rel=1e-12)
    assert fig["pearson"] == pytest.approx(1.0, abs=1e-12) and fig["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert fig["ratio_p05"] == pytest.approx(1.0, abs=1e-12) and fig["ratio_p95"] == pytest.approx(1.0, abs=1e-12)
    assert fig["distortion"] == pytest.approx(0.0, abs=1e-12)


def test_random_map_is_not_isometric():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(80, 20, generator=gen)
    z = torch.tanh(torch.randn(80, 20, generator=gen))  # unrelated to x
    fig = isometry_figures(pair_distances(x), pair_distances(z))
    assert abs(fig["pearson"]) < 0.2 and abs(fig["spearman"]) < 0.2
    assert fig["distortion"] > 0.3


def test_monotone_but_nonlinear_map_has_spearman_one_not_pearson_one():
    dx = torch.linspace(0.1, 3.0, 50)
    fig = isometry_figures(dx, dx ** 3)
    assert fig["spearman"] == pytest.approx(1.0) and fig["pearson"] < 0.99 and fig["distortion"] > 1.0


def test_hand_computed_case_and_degenerate_inputs():
    fig = isometry_figures(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    assert fig["scale"] == pytest.approx(5.0 / 3.0)  # Σdx² / Σdx·dz
    assert math.isnan(fig["pearson"])  # dz is constant
    assert isometry_figures(np.array([1.0]), np.array([2.0]))["n_pairs"] == 1
    assert math.isnan(isometry_figures(np.array([1.0]), np.array([2.0]))["scale"])
    with pytest.raises(ValueError):
        isometry_figures(np.ones(3), np.ones(4))


class LinearFeatures(torch.nn.Module):
    """A 'model' whose hidden layers are known maps: an exact isometry ×0.5, and a random projection."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(2)
        self.q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
        self.p = torch.randn(6, 2, generator=gen)

    def forward_features(self, x):
        z0 = 0.5 * x @ self.q
        z1 = torch.tanh(3 * x @ self.p)
        return x[:, :3], [z0, z1]


def test_measure_isometry_per_layer_and_class():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(90, 6, generator=gen)
    y = torch.arange(90) % 3
    table = measure_isometry(LinearFeatures(), x, y, max_per_class=20)
    assert list(table.columns[:4]) == ["layer", "class", "n_points", "n_pairs"]
    assert len(table) == 2 * 4  # 2 layers × (3 classes + pooled)
    per_class = table[table["class"] != "all"]
    assert (per_class["n_points"] == 20).all() and (per_class["n_pairs"] == 190).all()
    iso = table[table["layer"] == 0]
    assert np.allclose(iso["scale"], 2.0) and np.allclose(iso["pearson"], 1.0) and np.allclose(iso["distortion"], 0, atol=1e-5)
    assert (table[table["layer"] == 1]["distortion"] > 0.1).all()
    only_last = measure_isometry(LinearFeatures(), x, y, layers=[-1], max_per_class=None)
    assert set(only_last["layer"]) == {1} and (only_last[only_last["class"] == "0"]["n_points"] == 30).all()
    summary = summarise(table)
    assert [s["layer"] for s in summary] == [0, 1] and "class" not in summary[0]
    with pytest.raises(ValueError, match="out of range"):
        measure_isometry(LinearFeatures(), x, y, layers=[2])


def test_regions_restrict_pairs_and_add_a_column():
    x = torch.randn(40, 6)
    y = torch.zeros(40, dtype=torch.long)
    near = torch.arange(40) < 10
    table = measure_isometry(LinearFeatures(), x, y, layers=[0], regions={"near": near, "far": ~near})
    assert "region" in table.columns
    rows = table.set_index(["region", "class"])
    assert rows.loc[("near", "0"), "n_points"] == 10 and rows.loc[("far", "0"), "n_points"] == 30


def test_mlp_measurement_covers_every_hidden_layer():
    model = MLP(in_features=12, width=8, depth=2, num_classes=3)
    x, y = torch.rand(50, 12), torch.arange(50) % 3
    table = measure_isometry(model, x, y)
    assert sorted(table["layer"].unique()) == [0, 1, 2]
    assert table[["scale", "pearson", "spearman", "distortion"]].notna().all().all()
    assert isinstance(table, pd.DataFrame)


def test_bad_isometry_options_stop_the_run_before_training(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("train", "dataset=torus", "dataset.grid=4", "dataset.test_grid=4", "eval.isometry_layers=[7]",
                   "eval.isometry_max_per_class=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("isorobust: error:") and "isometry_layers" in line and "isometry_max_per_class" in line
    assert not (tmp_path / "run" / "model.pt").exists()
