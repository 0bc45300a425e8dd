import gzip

import numpy as np
import pytest
import torch

from isorobust.data import load_mnist, read_idx, write_idx
from isorobust.errors import ConfigError, DataError


def write_fake_mnist(raw, n_train=12, n_test=5, gz=False):
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_idx_files(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    data = load_mnist(root=str(tmp_path), download=False)
    assert data.train.x.shape == (12, 1, 28, 28) and data.test.x.shape == (5, 1, 28, 28)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0
    images, labels = arrays["train"]
    assert torch.allclose(data.train.x[:, 0] * 255, torch.from_numpy(images).float())
    assert torch.equal(data.train.y, torch.from_numpy(labels).long())
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_subset_sizes_take_the_first_n(tmp_path):
    write_fake_mnist(tmp_path / "MNIST" / "raw")
    full = load_mnist(root=str(tmp_path), download=False)
    sub = load_mnist(root=str(tmp_path), download=False, train_size=4, test_size=2)
    assert len(sub.train) == 4 and len(sub.test) == 2
    assert torch.equal(sub.train.x, full.train.x[:4])
    with pytest.raises(ConfigError):
        load_mnist(root=str(tmp_path), download=False, train_size=0)


def test_missing_data_offline_names_the_setting(tmp_path):
    with pytest.raises(DataError, match="ISOROBUST_DATA"):
        load_mnist(root=str(tmp_path), download=False)


def test_truncated_idx_file_is_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_fake_mnist(raw)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(root=str(tmp_path), download=False)


def test_bad_magic_is_refused(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_idx_round_trip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", a)
    assert np.array_equal(read_idx(tmp_path / "a.idx").numpy(), a)


def test_split_take_gives_the_rows_indexing_gives():
    from isorobust.data.dataset import Split

    split = Split(torch.rand(50, 1, 4, 4), torch.randint(0, 10, (50,)))
    idx = torch.randperm(50)[:17]
    batch = split.take(idx)
    assert torch.equal(batch.x, split.x[idx]) and torch.equal(batch.y, split.y[idx]) and len(batch) == 17
