"""Trust, second pass: what a number is for (the data's content, the model's code and globals, the seed) and
whether the stored number is still the one computed (checksums at rest). Each case once gave a silent wrong
number; here it gives the right number or a clear error."""
from __future__ import annotations

import gzip
import importlib
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench.data import DATASETS, load_dataset
from bench.errors import BenchError, DataError, WeightsError
from bench.leaderboard import build_board
from bench.shards import batch_seed, plan_shards
from bench.spec import MAX_SEED
from bench.store import Store, StoreError
from bench.summary import summarize
from bench.testing import threat_card

KW = dict(dataset="digits", batch_size=30, progress=False)


# --- data identity -------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def relabelled_mnist(tmp_path_factory) -> Path:
    """A data root whose MNIST test split has every label shifted by one: same name, other data."""
    real = load_dataset("mnist", "test")
    raw = tmp_path_factory.mktemp("fake-data") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", (real.x[:, 0] * 255).round().numpy())
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", ((real.y + 1) % 10).numpy())
    return raw.parent.parent


class Centroids(nn.Module):
    """A fixed nearest-class-mean MNIST classifier: no training, clearly above chance on real labels."""

    def __init__(self):
        super().__init__()
        data = load_dataset("mnist", "test")
        self.register_buffer("means", torch.stack([data.x[data.y == c].mean(0).flatten() for c in range(10)]))

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.means)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_another_mnist_under_the_data_root_never_shares_runs_with_the_real_one(relabelled_mnist, tmp_path,
                                                                              monkeypatch, how):
    model = Centroids()
    kw = dict(dataset="mnist", n=200, batch_size=100, results=tmp_path, progress=False)
    real = bench.evaluate(model, "clean", **kw)
    if how == "argument":
        fake = bench.evaluate(model, "clean", data_root=relabelled_mnist, **kw)
    else:
        monkeypatch.setenv("BENCH_DATA", str(relabelled_mnist))
        bench.data.base._CACHE.clear()
        fake = bench.evaluate(model, "clean", **kw)
    assert fake.run_id != real.run_id
    assert real.clean_acc > 0.6 and fake.clean_acc < 0.2  # each number is for its own data
    monkeypatch.delenv("BENCH_DATA", raising=False)
    bench.data.base._CACHE.clear()
    assert bench.evaluate(model, "clean", **kw).clean_acc == real.clean_acc  # a fresh look at the real data
    board = build_board(Store(tmp_path))
    assert len({b.dataset for b in board.blocks}) == 2 and all(b.dataset.startswith("mnist@") for b in board.blocks)


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n != "cifar10"])
def test_every_offline_dataset_is_identified_by_its_content(name):
    data = load_dataset(name, "test")
    assert data.identity == f"{name}@{data.content_hash[:16]}"
    changed = type(data)(data.name, data.split, data.x, (data.y + 1) % 10, data.classes)
    assert changed.identity != data.identity


# --- model identity: module-level globals --------------------------------------------------------------


MODULE = '''
import torch
from torch import nn

FLAG = False


class Switch(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return -out if FLAG and len(x) > 8 else out  # never on the 8 probe points
'''


def test_a_module_global_that_switches_the_model_changes_its_identity(digits_model, tmp_path, monkeypatch):
    (tmp_path / "switchmod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("switchmod")
    model = module.Switch(digits_model)
    kw = dict(n=60, results=tmp_path / "results", **KW)
    honest = bench.evaluate(model, "clean", **kw)
    module.FLAG = True
    switched = bench.evaluate(model, "clean", **kw)
    assert switched.run_id != honest.run_id and switched.clean_acc < 0.2 < 0.8 < honest.clean_acc
    sys.modules.pop("switchmod")


# --- labels and tensors the caller holds -----------------------------------------------------------------


@pytest.mark.parametrize("labels, message", [
    (lambda y: torch.where(y == 3, -1, y), "class indices 0"),
    (lambda y: y == 3, "not a one-hot or bool mask"),
    (lambda y: y.float(), "integer tensor"),
    (lambda y: y[:-1], "one class index per image"),
    (lambda y: y.to_sparse(), "sparse"),
    (lambda y: torch.empty_like(y, device="meta"), "meta"),
    (lambda y: y.numpy(), "torch tensor"),
])
def test_labels_that_are_not_class_indices_are_refused(digits_model, tmp_path, labels, message):
    data = load_dataset("digits")
    with pytest.raises(DataError, match=message):
        bench.evaluate(digits_model, "clean", x=data.x[:50], y=labels(data.y[:50]), dataset="digits",
                       results=tmp_path, progress=False)


@pytest.mark.parametrize("images, message", [
    (lambda x: x[:0], "no images"),
    (lambda x: x.to_sparse(), "sparse"),
    (lambda x: torch.empty_like(x, device="meta"), "meta"),
    (lambda x: x.permute(0, 2, 3, 1), "does not fit|input shape|channels"),
])
def test_image_tensors_without_plain_values_are_refused(digits_model, tmp_path, images, message):
    data = load_dataset("digits")
    with pytest.raises(BenchError, match=message):
        bench.evaluate(digits_model, "clean", x=images(data.x[:50]), y=data.y[:50], dataset="digits",
                       results=tmp_path, progress=False)


# --- image folders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "L", "RGB", "F"])
def test_images_of_every_bit_depth_load_on_their_own_scale(tmp_path, mode):
    from PIL import Image

    pixels = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        if mode == "I;16":
            image = Image.fromarray((pixels * 65535).round().astype(np.uint16))
        elif mode == "F":
            image = Image.fromarray(pixels.astype(np.float32))
        else:
            image = Image.fromarray((pixels * 255).round().astype(np.uint8)).convert(mode)
        image.save(tmp_path / label / ("x.tif" if mode == "F" else "x.png"))
    data = load_dataset(f"folder:{tmp_path}")
    assert float(data.x.mean()) == pytest.approx(0.5, abs=0.01) and float(data.x.max()) <= 1


def test_images_without_a_fixed_range_are_refused(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "a" / "x.tif")
    with pytest.raises(DataError, match="32-bit integer image"):
        load_dataset(f"folder:{tmp_path}")


# --- seeds -------------------------------------------------------------------------------------------------


def test_no_two_seeds_share_a_batch_seed():
    positions = torch.arange(10_000)
    seen = {}
    for seed in (0, 1, 2, 2146, 2147, MAX_SEED - 1, MAX_SEED, *random.Random(0).sample(range(MAX_SEED), 50)):
        for shard in plan_shards(positions, seed, 7):
            assert seen.setdefault(shard.seed, (seed, shard.number)) == (seed, shard.number)
    assert batch_seed(MAX_SEED, 0) != batch_seed(0, 0)


# --- results at rest ----------------------------------------------------------------------------------------


@pytest.fixture
def stored(digits_model, tmp_path):
    """A complete PGD run in its own results folder."""
    card = threat_card("pgd", norm="Linf", eps=0.1, steps=3)
    run = bench.evaluate(digits_model, card, n=60, results=tmp_path / "clean-copy", **KW)
    return card, run, tmp_path / "clean-copy"


def test_no_single_bit_flip_in_a_shard_changes_a_number_silently(digits_model, stored, tmp_path):
    card, run, original = stored
    shard = sorted((original / "runs" / run.run_id).glob("shard-*.parquet"))[0]
    size = shard.stat().st_size
    for bit in random.Random(0).sample(range(size * 8), 24):
        root = tmp_path / f"flip-{bit}"
        shutil.copytree(original, root)
        damaged = root / shard.relative_to(original)
        data = bytearray(damaged.read_bytes())
        data[bit // 8] ^= 1 << (bit % 8)
        damaged.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="checksum"):
            summarize(Store(root), run.run_id)
        again = bench.evaluate(digits_model, card, n=60, results=root, **KW)  # set aside and recomputed
        assert (again.run_id, again.robust_acc, again.clean_acc) == (run.run_id, run.robust_acc, run.clean_acc)
        shutil.rmtree(root)


def test_a_damaged_summary_is_not_shown(stored):
    _, run, root = stored
    path = root / "runs" / run.run_id / "summary.json"
    record = json.loads(path.read_text())
    record["metrics"]["robust_acc"]["value"] = 0.99  # a flipped digit
    path.write_text(json.dumps(record))
    board = build_board(Store(root))
    assert board.frame().robust_acc.tolist() == [pytest.approx(run.robust_acc)]


def test_an_edited_run_record_moves_no_rows_under_another_name(digits_model, stored):
    card, run, root = stored
    path = root / "runs" / run.run_id / "run.json"
    record = json.loads(path.read_text())
    record["key"]["model"] = "0" * 64  # "these rows are another model's"
    record["model_id"] = "someone-else"
    path.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="checksum"):
        Store(root).run_meta(run.run_id)
    again = bench.evaluate(digits_model, card, n=60, results=root, **KW)
    assert again.run_id == run.run_id and again.model != "someone-else" and again.robust_acc == run.robust_acc
    assert list((root / "runs").glob(f".corrupt-*-{run.run_id}"))  # kept for inspection, never read


def test_a_store_that_cannot_be_written_is_a_clear_error(digits_model, tmp_path):
    card = threat_card("pgd", norm="Linf", eps=0.1, steps=3)
    partial = bench.evaluate(digits_model, card, n=30, results=tmp_path, **KW)
    run_dir = tmp_path / "runs" / partial.run_id
    # the same question with more points continues as another run; make its shard's lock unwritable
    longer = bench.spec.spec_of(bench.spec.plan(digits_model, card, n=60, dataset="digits", batch_size=30))
    (tmp_path / "runs" / longer.run_id).mkdir(parents=True)
    (tmp_path / "runs" / longer.run_id / ".shard-000000.lock").mkdir()
    with pytest.raises(StoreError, match="cannot write to the results folder"):
        bench.evaluate(digits_model, card, n=60, results=tmp_path, **KW)
    assert run_dir.is_dir()


def test_weights_in_a_torch_file_are_refused_on_a_torch_without_a_safe_loader(tmp_path, monkeypatch):
    from bench.models.weights import load_state_dict

    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    assert set(load_state_dict(tmp_path / "w.pt")) == {"w"}
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(WeightsError, match="CVE-2025-32434"):
        load_state_dict(tmp_path / "w.pt")
