"""dataset=cifar10 and experiment=paper_cifar10 on a small file set in CIFAR-10's own pickle format.

No machine here has the CIFAR-10 files: the tests write batch files as torchvision's archive holds
them (pickled dicts: ``data`` uint8 N×3072, ``labels`` a list of ints) and run the pipeline on them.
"""
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from isorobust.data import cifar10 as cifar
from isorobust.data import load_cifar10
from isorobust.errors import DataError
from tests.conftest import run_cli

N_PER_TRAIN_BATCH, N_TEST = 20, 40


def write_cifar10(root: Path, n_per_batch: int = N_PER_TRAIN_BATCH, n_test: int = N_TEST, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch}`` with random images; returns the arrays."""
    folder = root / cifar.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in [(f, n_per_batch) for f in cifar.TRAIN_FILES] + [("test_batch", n_test)]:
        batch = {
            b"batch_label": f"{name} (test fixture)".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    return written


def python2_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the original files (str keys and data, numpy.core globals)."""
    def s(b: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(n: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", n)

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(images.shape[0]) + i(3072) + b"\x86"
             + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
             + b"\x89" + s(images.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"data") + array
            + s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
            + s(b"filenames") + b"](" + b"".join(s(b"x.png") for _ in labels) + b"eu.")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root)


def test_reads_the_batch_files(cifar_root):
    root, written = cifar_root
    data = load_cifar10(root=str(root), download=False)
    assert data.name == "cifar10" and data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.train.x.shape == (5 * N_PER_TRAIN_BATCH, 3, 32, 32) and data.test.x.shape == (N_TEST, 3, 32, 32)
    assert data.train.x.dtype == torch.float32 and 0 <= data.train.x.min() and data.train.x.max() <= 1
    # no normalisation: pixel / 255; each row is the red, then green, then blue 32×32 plane
    test = written["test_batch"]
    assert torch.equal(data.test.x * 255, torch.from_numpy(test[b"data"]).float().view(-1, 3, 32, 32))
    assert torch.equal(data.test.x[3, 1, 0, :] * 255, torch.from_numpy(test[b"data"][3, 1024:1056]).float())
    assert torch.equal(data.test.y, torch.tensor(test[b"labels"]))
    train_labels = sum((written[f][b"labels"] for f in cifar.TRAIN_FILES), [])
    assert torch.equal(data.train.y, torch.tensor(train_labels))


def test_subsets_are_the_first_n_across_batch_files(cifar_root):
    root, written = cifar_root
    data = load_cifar10(root=str(root), download=False, train_size=N_PER_TRAIN_BATCH + 5, test_size=7)
    assert len(data.train) == N_PER_TRAIN_BATCH + 5 and len(data.test) == 7
    expected = written["data_batch_1"][b"labels"] + written["data_batch_2"][b"labels"][:5]
    assert data.train.y.tolist() == expected


def test_reads_python2_pickles_as_the_original_archive_holds_them(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (6, 3072), dtype=np.uint8), [0, 9, 3, 3, 1, 7]
    (tmp_path / "data_batch_1").write_bytes(python2_pickle(images, labels))
    split = cifar.read_batch(tmp_path / "data_batch_1")
    assert torch.equal(split.x * 255, torch.from_numpy(images).float().view(-1, 3, 32, 32))
    assert split.y.tolist() == labels


def assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(DataError) as exc:
        load_cifar10(root=str(tmp_path / "empty"), download=False)
    assert_one_line(exc, "CIFAR-10 not found", "cifar-10-batches-py", "dataset.root")


def test_failed_download_is_one_line_error(tmp_path, monkeypatch):
    def offline(root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(cifar, "_torchvision_download", offline)
    with pytest.raises(DataError) as exc:
        load_cifar10(root=str(tmp_path), download=True)
    assert_one_line(exc, "download failed", "Temporary failure")


def test_missing_data_through_the_cli(tmp_path):
    proc = run_cli("train", "dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false",
                   "model=cnn", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("isorobust: error: CIFAR-10 not found") and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def corrupt_copy(src: Path, dst_root: Path, name: str, content: bytes) -> Path:
    folder = dst_root / cifar.FOLDER
    folder.mkdir(parents=True)
    for f in cifar.TRAIN_FILES + cifar.TEST_FILES:
        (folder / f).write_bytes((src / cifar.FOLDER / f).read_bytes())
    (folder / name).write_bytes(content)
    return folder / name


def test_truncated_batch_file_is_one_line_error(cifar_root, tmp_path):
    root, _ = cifar_root
    whole = (root / cifar.FOLDER / "data_batch_2").read_bytes()
    path = corrupt_copy(root, tmp_path, "data_batch_2", whole[: len(whole) // 2])
    with pytest.raises(DataError) as exc:
        load_cifar10(root=str(tmp_path), download=False)
    assert_one_line(exc, str(path), "truncated or corrupt")


@pytest.mark.parametrize("content, needle", [
    (b"\x00garbage, not a pickle", "truncated or corrupt"),
    (pickle.dumps([1, 2, 3], protocol=2), "not a dict"),
    (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), "uint8 array N×3072"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.float64), b"labels": [0] * 4}), "not an integer type"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}), "ints in 0..9"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}), "ints in 0..9"),
], ids=["not-a-pickle", "not-a-dict", "wrong-shape", "float-data", "label-out-of-range", "too-few-labels"])
def test_batch_with_wrong_contents_is_one_line_error(tmp_path, content, needle):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError) as exc:
        cifar.read_batch(tmp_path / "test_batch")
    assert_one_line(exc, needle)


class SystemPayload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CIFAR",))


class EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED_BY_CIFAR').touch()",))


class ArrayCallPayload:  # numpy.ndarray is allowed inside an array pickle, never as something to call
    def __reduce__(self):
        return (np.ndarray, ((1 << 40,),))


@pytest.mark.parametrize("payload, needle", [
    (SystemPayload(), "system"), (EvalPayload(), "builtin__.eval"), (ArrayCallPayload(), "truncated or corrupt"),
])
def test_pickle_payload_is_refused_and_never_runs(cifar_root, tmp_path, monkeypatch, payload, needle):
    root, written = cifar_root
    monkeypatch.chdir(tmp_path)
    evil = {**written["test_batch"], b"filenames": payload}
    corrupt_copy(root, tmp_path, "test_batch", pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError) as exc:
        load_cifar10(root=str(tmp_path), download=False)
    assert_one_line(exc, needle)
    assert not (tmp_path / "PWNED_BY_CIFAR").exists()


# experiment=paper_cifar10 end to end on the fixture: every attack, the checks, the sweep summary.
# The model and the attack budgets are cut to keep it fast; every component still runs.
TINY = ["model.channels=[4,8]", "model.width=16", "model.depth=2", "trainer.epochs=1", "seed=0",
        "attack.pgd.steps=5", "attack.apgd.steps=5", "attack.apgd.n_target_classes=2",
        "attack.autoattack.steps=5", "attack.autoattack.n_target_classes=2", "attack.autoattack.square_queries=20",
        "check.n_samples=20", "check.gradient_free.n_queries=20"]
ATTACKS = {"fgsm", "pgd", "apgd", "paper_fgsm", "autoattack"}


@pytest.fixture(scope="module")
def sweep(cifar_root, tmp_path_factory):
    root, _ = cifar_root
    work = tmp_path_factory.mktemp("paper_cifar10")
    sweep_dir = work / "sweep"
    proc = run_cli("train", "-m", "experiment=paper_cifar10", f"dataset.root={root}", "dataset.download=false",
                   *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, sweep_dir


def test_paper_cifar10_sweep_runs_end_to_end(sweep):
    _, sweep_dir = sweep
    weights = []
    for job in ("0", "1"):  # reg.weight = 0, 0.1 at seed 0
        run = sweep_dir / job
        for name in ("model.pt", "metrics.json", "robustness.csv", "robustness.md", "checks.csv", "isometry.csv"):
            assert (run / name).is_file(), (job, name)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["dataset"] == "cifar10" and metrics["model"] == "cnn"
        assert metrics["n_train"] == 5 * N_PER_TRAIN_BATCH and metrics["n_test"] == N_TEST
        table = pd.read_csv(run / "robustness.csv")
        assert set(table["attack"]) == ATTACKS | {"worst_case"}
        assert (table["reg"] == "isometric").all() and (table["reg_scale"] == 1.0).all()
        weights.append(float(table["reg_weight"].iloc[0]))
        eps = set(table["epsilon"].round(6))
        assert {round(k / 255, 6) for k in (1, 2, 4, 8, 16)} <= eps and {0.01, 1.0} <= eps
        assert set(table.loc[table["attack"] == "autoattack", "epsilon"].round(6)) == {
            round(k / 255, 6) for k in (1, 2, 4, 8, 16)}
        assert (table["robust_accuracy"] <= table["clean_accuracy"]).all()
        checks = pd.read_csv(run / "checks.csv")
        assert len(checks) >= 5 and checks["passed"].isin([True, False]).all()
        isometry = pd.read_csv(run / "isometry.csv")
        assert set(isometry["layer"]) == {0, 1}  # the CNN's two tanh layers
    assert sorted(weights) == [0.0, 0.1]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert set(summary["run"].astype(str)) == {"0", "1"} and set(summary["dataset"]) == {"cifar10"}
    assert (sweep_dir / "summary.md").is_file()


SINGLE = ["dataset=cifar10", "dataset.download=false", "model=cnn", "model.channels=[4,8]", "model.width=16",
          "model.depth=2", "+reg=isometric", "reg.layer=0", "trainer.epochs=1", "attack=[fgsm,pgd,apgd,paper_fgsm]",
          "eval.epsilons=[0.01,0.03]", "attack.pgd.steps=5", "attack.apgd.steps=5", "check.n_samples=20",
          "check.gradient_free.n_queries=20"]


def test_train_then_attack_a_cnn_run(cifar_root, tmp_path):
    root, _ = cifar_root
    run_dir = tmp_path / "run"
    proc = run_cli("train", *SINGLE, f"dataset.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["isometric_loss_layer"] == 0 and metrics["train_isometric_loss"] > 0
    table = pd.read_csv(run_dir / "robustness.csv")
    assert set(table["attack"]) == {"fgsm", "pgd", "apgd", "paper_fgsm", "worst_case"}
    assert sorted(table["epsilon"].unique()) == [0.01, 0.03] and (table["n_samples"] == N_TEST).all()
    assert (run_dir / "checks.csv").is_file() and (run_dir / "isometry.csv").is_file()
    # `isorobust attack` rebuilds the CNN through the safe loader and reproduces the run's table
    out = tmp_path / "reattack"
    proc = run_cli("attack", f"run={run_dir}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(out / "robustness.csv"), table)


def test_paper_cifar10_composes_the_authors_settings(tmp_path):
    proc = run_cli("train", "experiment=paper_cifar10", "--cfg", "all", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(proc.stdout)
    assert cfg.dataset.name == "cifar10" and cfg.dataset._target_ == "isorobust.data.load_cifar10"
    assert cfg.model._target_ == "isorobust.models.cnn"
    assert list(cfg.model.channels) == [128, 256] and cfg.model.width == 1000 and cfg.model.depth == 3
    assert cfg.reg.name == "isometric" and cfg.reg.weight == 0.1 and cfg.reg.scale == 1.0 and cfg.reg.layer == -1
    assert cfg.trainer.lr == 0.001 and cfg.trainer.batch_size == 100 and cfg.trainer.epochs == 10
    assert cfg.device == "auto"
    assert list(cfg.attack) == ["fgsm", "pgd", "apgd", "paper_fgsm", "autoattack"]
    cifar_radii = [k / 255 for k in (1, 2, 4, 8, 16)]
    assert cfg.attack.autoattack.n_samples == 1000
    assert np.allclose(cfg.attack.autoattack.epsilons, cifar_radii)
    assert np.allclose(sorted(cfg.eval.epsilons), sorted(cifar_radii + list(np.logspace(-2, 0, 10))))
    assert dict(cfg.hydra.sweeper.params) == {"reg.weight": "0,0.1", "seed": "0,1,2"}
