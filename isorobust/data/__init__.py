from isorobust.data.dataset import ImageDataset, Split
from isorobust.data.idx import read_idx, write_idx
from isorobust.data.mnist import load_mnist

__all__ = ["ImageDataset", "Split", "load_mnist", "read_idx", "write_idx"]
