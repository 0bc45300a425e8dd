"""CIFAR-10 in torchvision's layout (``<root>/cifar-10-batches-py/``), read without trusting the files.

The batch files (``data_batch_1`` … ``data_batch_5``, ``test_batch``) are pickled dicts: ``data`` a
uint8 array N×3072 (the 1024 red, then green, then blue values of each 32×32 image, row-major),
``labels`` a list of N ints in 0…9 (keys are ``bytes`` or ``str`` depending on how they were read).
A pickle can run any code when it is loaded, so these are read by ``SafeUnpickler``: it builds
only dicts, lists, tuples, strings, bytes, numbers and numpy integer arrays, and refuses every other
global a file names (``os.system``, ``builtins.eval``, ...) with one line, before anything runs.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isorobust.data.dataset import ImageDataset, Split, first_n
from isorobust.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer as _np_frombuffer  # type: ignore[no-redef]


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it, nothing may call it."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__ with the data:
    # anything else (another class, a large shape to allocate) is not an array pickle.
    if subtype is not _NdarrayClass or shape not in ((0,), [0], 0):
        raise pickle.UnpicklingError("not a plain numpy array")
    return _np_reconstruct(np.ndarray, (0,), b"b")


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str) or np.dtype(spec).kind not in "biu":
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not an integer type")
    return np.dtype(spec, bool(align), bool(copy))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biu":
        raise pickle.UnpicklingError("not an integer numpy array")
    return _np_frombuffer(buffer, dtype, shape, order)


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 encoded bytes are allowed")
    return text.encode("latin1")


# (module, name) a file may name -> what it gets. Everything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(mod, "_reconstruct"): _reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    # plain containers and scalars (protocol 2 writes b'' as bytes()); never eval, getattr, open, ...
    **{(mod, t.__name__): t for mod in ("builtins", "__builtin__") for t in (bytes, str, int, list, dict, tuple)},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of a plain dict of numpy integer arrays and lists."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(f"refusing {getattr(self, 'source', 'the file')}: it names {module}.{name}, "
                            "which a CIFAR-10 batch never does (a pickle payload?); nothing in it was run")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_unpickle(data: bytes, source: str = "the file") -> Any:
    """Unpickle ``data`` with ``SafeUnpickler`` (latin-1 for Python 2 strings, as torchvision does)."""
    unpickler = SafeUnpickler(io.BytesIO(data), encoding="latin1")
    unpickler.source = source  # type: ignore[attr-defined]
    return unpickler.load()


def _field(batch: dict, key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    return None


def read_batch(path: Path) -> Split:
    """One batch file as a Split: inputs float in [0, 1] of shape (N, 3, 32, 32), labels int64."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc.strerror or exc}") from None
    try:
        batch = safe_unpickle(raw, str(path))
    except DataError:
        raise
    except Exception as exc:  # truncated (EOFError), garbage (UnpicklingError), bad array state (ValueError) ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read CIFAR-10 batch {path}: truncated or corrupt ({reason})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (a pickled {type(batch).__name__}, not a dict)")
    images, labels = _field(batch, "data"), _field(batch, "labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        described = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch: 'data' must be a uint8 array N×3072 (got {described})")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = np.zeros(0)
    if labels is None or y.shape != (images.shape[0],) or (y.size and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise DataError(f"{path} is not a CIFAR-10 batch: 'labels' must be {images.shape[0]} ints in 0..9")
    # Inputs live in [0, 1]; any normalisation belongs to the model, not the data.
    x = torch.from_numpy(np.ascontiguousarray(images)).view(-1, *IMAGE_SHAPE).float().div_(255.0)
    return Split(x=x, y=torch.from_numpy(y))


def read_split(folder: Path, names: tuple[str, ...], limit: int | None) -> Split:
    """The batch files ``names`` in order, concatenated; stops reading once ``limit`` samples are in."""
    parts: list[Split] = []
    for name in names:
        parts.append(read_batch(folder / name))
        if limit is not None and sum(len(p) for p in parts) >= limit:
            break
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _torchvision_download(root: Path) -> None:
    """Fetch and unpack torchvision's CIFAR-10 archive (md5-checked) without letting torchvision
    unpickle it: ``CIFAR10(download=True)`` would load the batches with the plain ``pickle``."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def load_cifar10(
    root: str = "data",
    download: bool = True,
    train_size: int | None = None,
    test_size: int | None = None,
    name: str = "cifar10",
) -> ImageDataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision's layout), downloading it when allowed."""
    root_path = Path(root).expanduser()
    folder = root_path / FOLDER

    def present() -> bool:
        return all((folder / f).is_file() for f in TRAIN_FILES + TEST_FILES)

    if not present() and download:
        try:
            _torchvision_download(root_path)
        except Exception as exc:  # network errors come in many types; all mean the same here
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"CIFAR-10 not found under {root_path} and the download failed ({reason}); "
                f"point dataset.root (or ISOROBUST_DATA) at a folder holding {FOLDER}/"
            ) from None
    if not present():
        missing = [f for f in TRAIN_FILES + TEST_FILES if not (folder / f).is_file()]
        raise DataError(
            f"CIFAR-10 not found under {root_path} ({FOLDER}/{missing[0]} missing"
            f"{'' if download else ', dataset.download=false'}); point dataset.root (or ISOROBUST_DATA) "
            f"at a folder holding {FOLDER}/data_batch_1..5 and test_batch"
        )
    train = read_split(folder, TRAIN_FILES, train_size)
    test = read_split(folder, TEST_FILES, test_size)
    return ImageDataset(name=name, train=first_n(train, train_size), test=first_n(test, test_size),
                        num_classes=NUM_CLASSES)


__all__ = ["load_cifar10", "read_batch", "safe_unpickle", "SafeUnpickler"]
