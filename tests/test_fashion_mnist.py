"""dataset=fashion_mnist: gz IDX files in torchvision's layout or the Debian package's folder."""
from pathlib import Path

import numpy as np
import pytest
import torch

from isorobust.data import load_fashion_mnist, write_idx
from isorobust.data.mnist import FASHION_MNIST_SYSTEM_FOLDER
from isorobust.errors import DataError


def write_fake_idx(folder: Path, n_train=9, n_test=4, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_reads_gz_idx_files_from_the_data_root(tmp_path):
    arrays = write_fake_idx(tmp_path / "FashionMNIST" / "raw")
    data = load_fashion_mnist(root=str(tmp_path), download=False, system_folder=None)
    assert data.name == "fashion_mnist" and data.num_classes == 10
    assert data.train.x.shape == (9, 1, 28, 28) and data.test.x.shape == (4, 1, 28, 28)
    images, labels = arrays["t10k"]
    assert torch.allclose(data.test.x[:, 0] * 255, torch.from_numpy(images).float())
    assert torch.equal(data.test.y, torch.from_numpy(labels).long())


def test_falls_back_to_the_system_folder_and_prefers_the_root(tmp_path):
    system = tmp_path / "system"
    from_system = write_fake_idx(system, seed=1)
    data = load_fashion_mnist(root=str(tmp_path / "empty"), download=False, system_folder=str(system))
    assert torch.equal(data.train.y, torch.from_numpy(from_system["train"][1]).long())
    from_root = write_fake_idx(tmp_path / "root" / "FashionMNIST" / "raw", seed=2)
    data = load_fashion_mnist(root=str(tmp_path / "root"), download=False, system_folder=str(system),
                              train_size=3)
    assert len(data.train) == 3
    assert torch.equal(data.train.y, torch.from_numpy(from_root["train"][1][:3]).long())


def test_missing_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="FashionMNIST"):
        load_fashion_mnist(root=str(tmp_path), download=False, system_folder=str(tmp_path / "nothing"))


@pytest.mark.skipif(not Path(FASHION_MNIST_SYSTEM_FOLDER, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)")
def test_debian_package_files_load(tmp_path):
    data = load_fashion_mnist(root=str(tmp_path), download=False, test_size=100)
    assert len(data.train) == 60000 and len(data.test) == 100
    assert set(data.train.y.unique().tolist()) == set(range(10))
