"""MNIST-format image data sets (28×28 grey images, IDX files) as in-memory tensors."""
from __future__ import annotations

from pathlib import Path

from isorobust.data.dataset import ImageDataset, Split, first_n
from isorobust.data.idx import read_idx
from isorobust.errors import DataError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(folders: list[Path], name: str) -> Path | None:
    """The first of ``folder/name`` or ``folder/name.gz`` that exists."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_split(folders: list[Path], images: str, labels: str) -> Split | None:
    image_path, label_path = find_idx_file(folders, images), find_idx_file(folders, labels)
    if image_path is None or label_path is None:
        return None
    x, y = read_idx(image_path), read_idx(label_path)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{image_path} ({tuple(x.shape)}) and {label_path} ({tuple(y.shape)}) do not match")
    # Inputs live in [0, 1]; any normalisation belongs to the model, not the data.
    return Split(x=x.unsqueeze(1).float().div_(255.0), y=y.long())


def _torchvision_download(root: Path, dataset_cls_name: str) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset_cls_name)
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def load_idx_dataset(
    name: str,
    folder_name: str,
    torchvision_name: str,
    root: str,
    download: bool,
    train_size: int | None,
    test_size: int | None,
    extra_folders: tuple[str, ...] = (),
    num_classes: int = 10,
) -> ImageDataset:
    root_path = Path(root).expanduser()
    folders = [root_path / folder_name / "raw", root_path / folder_name, root_path] + [Path(f) for f in extra_folders]

    def load_all() -> tuple[Split | None, Split | None]:
        return load_split(folders, *MNIST_FILES["train"]), load_split(folders, *MNIST_FILES["test"])

    train, test = load_all()
    if (train is None or test is None) and download:
        try:
            _torchvision_download(root_path, torchvision_name)
        except Exception as exc:  # network errors come in many types; all mean the same here
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{name} not found under {root_path} and the download failed ({reason}); "
                f"point dataset.root (or ISOROBUST_DATA) at a folder holding {folder_name}/raw/*-ubyte"
            ) from None
        train, test = load_all()
    if train is None or test is None:
        raise DataError(
            f"{name} not found under {root_path} (dataset.download=false); point dataset.root "
            f"(or ISOROBUST_DATA) at a folder holding {folder_name}/raw/train-images-idx3-ubyte etc."
        )
    return ImageDataset(
        name=name,
        train=first_n(train, train_size),
        test=first_n(test, test_size),
        num_classes=num_classes,
    )


def load_mnist(
    root: str = "data",
    download: bool = True,
    train_size: int | None = None,
    test_size: int | None = None,
    name: str = "mnist",
) -> ImageDataset:
    """MNIST from ``root/MNIST/raw`` (torchvision's layout), downloading it when allowed."""
    return load_idx_dataset(name, "MNIST", "MNIST", root, download, train_size, test_size)


FASHION_MNIST_SYSTEM_FOLDER = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def load_fashion_mnist(
    root: str = "data",
    download: bool = True,
    train_size: int | None = None,
    test_size: int | None = None,
    name: str = "fashion_mnist",
    system_folder: str | None = FASHION_MNIST_SYSTEM_FOLDER,
) -> ImageDataset:
    """Fashion-MNIST from ``root/FashionMNIST/raw`` (torchvision's layout), else the files of the Debian
    package ``dataset-fashion-mnist`` (``system_folder``, the same IDX names, gzipped), else a download."""
    extra = (system_folder,) if system_folder else ()
    return load_idx_dataset(name, "FashionMNIST", "FashionMNIST", root, download, train_size, test_size,
                            extra_folders=extra)


__all__ = ["load_mnist", "load_fashion_mnist", "load_idx_dataset", "MNIST_FILES"]
