"""Datasets: every dataset loads as float images in [0, 1] (NCHW) with int64 labels; see ``base``."""
from bench.data.base import DATASETS, MAKERS, SPLITS, data_root, from_tensors, load_dataset, names, subset_indices
from bench.data.dataset import Dataset

__all__ = ["DATASETS", "MAKERS", "SPLITS", "Dataset", "data_root", "from_tensors", "load_dataset", "names",
           "subset_indices"]
