"""The CIFAR-10 path end to end: torchvision-layout files -> dataset -> shipped ResNet-18 card -> run.

torchvision md5-checks the real batch files, which a fixture cannot match, so the check is
patched; everything after it (unpickling layout, NCHW conversion, labels, classes) is real.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import bench
import bench.testing
from bench.data import load_dataset

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
    labels = list(range(10)) + [3, 7]
    batch = {"data": images.reshape(12, -1), "labels": labels}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path, images, labels


def test_cifar10_layout_is_read_as_nchw_in_unit_range(cifar_root):
    root, images, labels = cifar_root
    ds = load_dataset("cifar10", "test", root)
    assert ds.x.shape == (12, 3, 32, 32) and ds.y.tolist() == labels
    assert torch.equal(ds.x, torch.from_numpy(images).float() / 255)
    assert ds.classes == tuple(CLASSES)


def test_shipped_resnet18_card_runs_on_cifar10(cifar_root, tmp_path):
    root, *_ = cifar_root
    pgd = bench.testing.threat_card("pgd", norm="Linf", eps=8 / 255, steps=3)
    summary = bench.evaluate("cifar10-resnet18-standard", pgd, n=12, batch_size=6, device="cpu",
                             data_root=root, results=tmp_path / "r", progress=False)
    assert summary.n == 12 and summary.dataset == "cifar10"
    assert 0 <= summary.robust_acc <= summary.clean_acc <= 1
