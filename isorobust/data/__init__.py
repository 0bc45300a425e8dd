from isorobust.data.cifar10 import load_cifar10
from isorobust.data.dataset import ImageDataset, Split
from isorobust.data.idx import read_idx, write_idx
from isorobust.data.mnist import load_fashion_mnist, load_mnist
from isorobust.data.torus import TorusDataset, load_torus

__all__ = ["ImageDataset", "Split", "load_cifar10", "load_fashion_mnist", "load_mnist", "load_torus", "read_idx", "TorusDataset", "write_idx"]
