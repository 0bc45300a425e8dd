import pickle

import pytest
import torch

from isorobust.models.checkpoint import load_model, model_checkpoint
from isorobust import io
from isorobust.errors import CheckpointError
from isorobust.models import MLP, mlp


def test_shapes_and_hidden_features():
    model = mlp(input_shape=(1, 28, 28), num_classes=10, width=100, depth=4)
    x = torch.rand(7, 1, 28, 28)
    logits, feats = model.forward_features(x)
    assert logits.shape == (7, 10)
    assert len(feats) == 5 and all(f.shape == (7, 100) for f in feats)
    assert torch.equal(model(x), logits)
    assert all(f.abs().max() <= 1 for f in feats)  # tanh


def test_hidden_weights_are_orthogonal():
    model = MLP(in_features=20, width=30, depth=3)
    for layer in model.hidden:
        w = layer.weight
        assert torch.allclose(w @ w.T, torch.eye(30), atol=1e-5)


def test_seeded_init_is_deterministic():
    torch.manual_seed(0)
    a = MLP(in_features=10, width=8, depth=2)
    torch.manual_seed(0)
    b = MLP(in_features=10, width=8, depth=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_round_trip(tmp_path):
    model = MLP(in_features=12, width=6, depth=2, num_classes=3)
    io.save_torch(tmp_path / "model.pt", model_checkpoint(model))
    loaded = load_model(tmp_path / "model.pt")
    x = torch.rand(4, 12)
    assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    assert (tmp_path / "model.pt").stat().st_mode & 0o777 == io.FILE_MODE  # as shareable as a plain open()


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "isorobust.model", "state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "raw.pkl")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_truncated_and_mismatched_checkpoints_are_refused(tmp_path):
    model = MLP(in_features=12, width=6, depth=2)
    path = io.save_torch(tmp_path / "model.pt", model_checkpoint(model))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "cut.pt")
    ckpt = model_checkpoint(model)
    ckpt["model_config"]["width"] = 7  # the weights no longer fit
    io.save_torch(tmp_path / "other.pt", ckpt)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")
