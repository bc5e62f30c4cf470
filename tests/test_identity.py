"""Run identity of what has no card: a bare module is known by its code, attributes, weights and outputs,
and a user's data by its content, so neither is ever served another one's stored results."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench.identity import static_hash
from conftest import threat

KW = dict(dataset="digits", n=40, progress=False)


class Flippable(nn.Module):
    """Same weights whatever ``flip`` says; ``flip`` reverses the logits."""

    def __init__(self, inner, flip=False):
        super().__init__()
        self.inner, self.flip = inner, flip

    def forward(self, x):
        out = self.inner(x)
        return -out if self.flip else out


class Edited(Flippable):
    def forward(self, x):  # an edited forward with the same weights
        return self.inner(x) * 0 + self.inner(x).roll(1, dims=1)


def test_a_module_that_behaves_differently_never_gets_the_earlier_rows(digits_model, tmp_path):
    plain = bench.evaluate(Flippable(digits_model), threat("clean"), results=tmp_path, **KW)
    flipped = bench.evaluate(Flippable(digits_model, flip=True), threat("clean"), results=tmp_path, **KW)
    edited = bench.evaluate(Edited(digits_model), threat("clean"), results=tmp_path, **KW)
    assert len({plain.run_id, flipped.run_id, edited.run_id}) == 3
    assert plain.clean_acc > 0.8 and flipped.clean_acc < 0.2 and edited.clean_acc < 0.3
    again = bench.evaluate(Flippable(copy.deepcopy(digits_model)), threat("clean"), results=tmp_path, **KW)
    assert again.run_id == plain.run_id  # an equal module resumes the same run


def test_a_patched_forward_or_a_hook_changes_the_identity(digits_model):
    model = copy.deepcopy(digits_model)
    before = static_hash(model)
    model.forward = lambda x: torch.zeros(len(x), 10)
    assert static_hash(model) != before
    hooked = copy.deepcopy(digits_model)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert static_hash(hooked) != static_hash(digits_model)


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.3 * torch.randn_like(x))


def test_a_random_module_is_said_to_be_random_and_still_resumes(digits_model, tmp_path):
    first = bench.evaluate(Noisy(digits_model), threat("clean"), results=tmp_path, **KW)
    assert any("differ between two identical calls" in note for note in first.notes)
    second = bench.evaluate(Noisy(digits_model), threat("clean"), results=tmp_path, **KW)
    assert second.run_id == first.run_id  # identified by code and weights when its outputs are random


def _folder(root, labels_swapped=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(6):
        label = ("b" if index % 2 else "a") if not labels_swapped else ("a" if index % 2 else "b")
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(folder / f"{index}.png")


class TwoClass(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, :2]


def test_a_folder_dataset_is_known_by_its_content_and_hidden_folders_are_not_classes(digits_model, tmp_path):
    data = tmp_path / "images"
    _folder(data)
    (data / ".ipynb_checkpoints").mkdir()  # would shift every label if it were a class
    (data / "empty").mkdir()
    ds = bench.data.load_dataset(f"folder:{data}")
    assert ds.classes == ("a", "b") and len(ds) == 6
    kw = dict(dataset=f"folder:{data}", n=6, results=tmp_path / "r", progress=False)
    first = bench.evaluate(TwoClass(digits_model), threat("clean"), **kw)
    for path in data.rglob("*.png"):
        path.unlink()
    _folder(data, labels_swapped=True)
    relabelled = bench.evaluate(TwoClass(digits_model), threat("clean"), **kw)
    assert relabelled.clean_acc == pytest.approx(1 - first.clean_acc)
    assert relabelled.run_id != first.run_id
    table = bench.board(results=tmp_path / "r")
    assert table.dataset.nunique() == 2 and all(d.startswith(f"folder:{data}@") for d in table.dataset)


def test_a_folder_whose_classes_do_not_match_the_model_is_a_clear_error(digits_model, tmp_path):
    data = tmp_path / "eleven"
    from PIL import Image

    for index in range(11):
        (data / f"c{index:02d}").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(data / f"c{index:02d}" / "0.png")
    with pytest.raises(bench.BenchError, match="returned 10 logits per image, but the dataset has 11 classes"):
        bench.evaluate(digits_model, threat("clean"), dataset=f"folder:{data}", n=11, results=tmp_path,
                       progress=False)


def test_a_family_architecture_hashes_the_same_before_and_after_its_family_is_imported():
    """A card whose architecture a family provides was once hashed without the architecture's revision when it
    was the first thing a process hashed: one card had two training hashes, so cached weights went unseen."""
    import subprocess
    import sys

    code = ("from bench.models import load_model_card as load\n"
            "first = load('mnist-rts-cvae').training_hash\n"
            "import bench.families.learned_sets.cvae\n"
            "print(first == load('mnist-rts-cvae').training_hash)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
