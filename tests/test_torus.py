"""dataset=torus: shapes, determinism, contiguous class blocks, boundary distances, near/far isometry."""
import json
import math

import pandas as pd
import pytest
import torch

from isorobust.data import load_torus
from isorobust.data.torus import block_labels, boundary_distance, torus_points
from isorobust.errors import ConfigError
from isorobust.metrics.regions import boundary_regions, local_ratios
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


# experiment=torus on a reduced grid: 16² training points (full batch 256), 24² test points, 600 epochs
# instead of 40², 64² and 3000; the network, K, β, lr and classes are the preset's. Measured: 100 % clean
# accuracy for β = 0 and β = 1 from epoch 25 on (the full preset: >= 99.8 %), so 95 % is the issue's
# bar with a wide margin, not a tuned threshold.
TORUS_REDUCED = ("experiment=torus", "dataset.grid=16", "dataset.test_grid=24", "trainer.batch_size=256",
                 "trainer.epochs=600", "attack=fgsm", "eval.epsilons=[0.02,0.05]")


@pytest.fixture(scope="module")
def torus_sweep(tmp_path_factory):
    """``isorobust train -m experiment=torus`` on the reduced grid: the β = 0 and β = 1 runs."""
    sweep = tmp_path_factory.mktemp("torus") / "sweep"
    proc = run_cli("train", "-m", *TORUS_REDUCED, f"hydra.sweep.dir={sweep}", cwd=sweep.parent,
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {json.loads((d / "metrics.json").read_text())["reg_weight"]: d for d in sweep.iterdir()
            if (d / "metrics.json").is_file()}
    assert sorted(runs) == [0.0, 1.0]
    return sweep, runs


def test_torus_preset_reaches_95_percent_with_and_without_the_regularizer(torus_sweep):
    _, runs = torus_sweep
    for beta, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["clean_accuracy"] >= 0.95, (beta, metrics["clean_accuracy"])
        assert metrics["config"]["trainer"]["batch_size"] == metrics["n_train"] == 256  # full batch
        assert [r["epoch"] for r in metrics["history"]] == [100, 200, 300, 400, 500, 600]  # trainer.eval_every=100
        assert (metrics["reg"], metrics["reg_scale"]) == ("isometric", 1.0)
        table = pd.read_csv(run / "isometry.csv", dtype={"class": str})
        assert set(table["region"].dropna()) == {"near", "far"}  # the near/far rows stay
        assert (run / "isometry_torus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        cells = pd.read_csv(run / "isometry_torus.csv")
        assert set(cells["layer"]) == {0, 1, 2} and len(cells) == 3 * 24 * 24
        assert cells["ratio"].notna().all() and (cells["ratio"] > 0).all()


def test_torus_regularizer_makes_the_last_layer_isometric_away_from_the_boundaries(torus_sweep):
    from isorobust.metrics.regions import typical_stretch

    _, runs = torus_sweep
    stretch = {}
    for beta, run in runs.items():
        cells = pd.read_csv(run / "isometry_torus.csv")
        stretch[beta] = typical_stretch(cells[cells["layer"] == 2])
    # β = 1: far from the boundaries the map is close to an isometry, and it breaks near them
    assert stretch[1.0]["far"] < 1.3 < stretch[1.0]["near"], stretch
    assert stretch[1.0]["far"] < stretch[0.0]["far"], stretch


def test_side_by_side_figure_of_two_runs(torus_sweep, tmp_path, capsys):
    from isorobust.cli import main
    from isorobust.jobs.figure import side_by_side, torus_runs

    sweep, runs = torus_sweep
    assert torus_runs([sweep]) == [runs[0.0], runs[1.0]]  # a sweep directory: its runs in the order of β
    out = side_by_side([runs[1.0], runs[0.0]], tmp_path / "pair.png", layer=-1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(["figure", "torus", str(sweep), "--out", str(tmp_path / "sweep.png")])
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a directory without torus runs: one error line
        main(["figure", "torus", str(tmp_path), "--out", str(tmp_path / "none.png")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("isorobust: error:")
    with pytest.raises(SystemExit):  # a layer the runs did not measure
        main(["figure", "torus", str(sweep), "--layer", "7", "--out", str(tmp_path / "bad.png")])


def test_local_ratios_by_class_match_local_ratios():
    from isorobust.metrics.regions import local_ratios_by_class, within_class_scale

    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(90, 3, generator=g), torch.randn(90, 5, generator=g)
    y = torch.arange(90) % 3
    assert torch.allclose(local_ratios_by_class(x, z, y, 0.7, chunk=16), local_ratios(x, z, y, 0.7), equal_nan=True)
    assert within_class_scale(x, 2 * x, y) == pytest.approx(0.5)


def test_torus_test_angles_follow_the_test_points():
    data = load_torus(grid=6, test_grid=10, class_grid=(2, 2), test_size=50)
    assert data.test_angles.shape == (50, 2)
    u, v = data.test_angles[:, 0].double(), data.test_angles[:, 1].double()
    assert torch.equal(block_labels(u, v, (2, 2)), data.test.y)


def test_eval_every_records_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    """trainer.eval_every: records and checkpoints every N epochs and after the last; resuming from the
    last checkpoint ends where an uninterrupted run ends."""
    from isorobust.losses import IsometricRegularizer
    from isorobust.models import mlp
    from isorobust.training import StandardTrainer

    data = load_torus(grid=6, test_grid=8, class_grid=(2, 2))
    reg = [IsometricRegularizer(weight=1.0, scale=1.0)]

    def fit(epochs: int, run_dir, resume: bool = False):
        torch.manual_seed(0)
        model = mlp(data.input_shape, data.num_classes, width=8, depth=1)
        trainer = StandardTrainer(epochs=epochs, batch_size=16, lr=0.01, eval_every=3, resume=resume, progress=False)
        history = trainer.fit(model, data, reg, seed=0, run_dir=run_dir)
        return model, history

    whole, history = fit(7, tmp_path / "whole")
    assert [r["epoch"] for r in history] == [3, 6, 7]
    (tmp_path / "cut").mkdir()
    _, first = fit(4, tmp_path / "cut")  # "interrupted" after epoch 4 (the last one is always saved)
    assert [r["epoch"] for r in first] == [3, 4]
    resumed, history = fit(7, tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in history] == [3, 4, 6, 7]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_eval_every_must_be_a_positive_integer():
    from omegaconf import OmegaConf

    from isorobust.config import validate

    with pytest.raises(ConfigError, match="trainer.eval_every"):
        validate(OmegaConf.create({"trainer": {"eval_every": 0}}))
