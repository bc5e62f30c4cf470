"""The corruptions and ood families: every point under every cell, the stored cells against an independent
recomputation, determinism, mCE on the board, and the corrupted files on disk (published layout and
`bench data make`)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.data import load_dataset, subset_indices
from bench.errors import BenchError, CardError, DataError
from bench.threats.grid_board import _ratios, cell_table, error_table, mce_columns, normalised_errors
from bench.families.corruptions.files import LAYOUTS, CorruptedFiles
from bench.threats.grid import Cell, CellGrid
from bench.ops.shifts import SHIFTS
from bench.families.corruptions.suites import SUITES
from bench.families.corruptions.threats import CorruptionParams
from bench.leaderboard.table import build_board, render
from bench.shards import batch_seed
from bench.store import Store
from bench.tasks.classifier import predict
from bench.testing import threat_card, tiny_digits_model
from bench.threats import make_threat
from bench.threats.base import BoardRun

CIFAR = {"suite": "cifar10-c", "corruptions": ["gaussian_noise", "contrast"], "severities": [1, 3]}


def _evaluate(model, card, tmp_path, n=60, **kw):
    return bench.evaluate(model, card, dataset="digits", n=n, results=tmp_path, progress=False, **kw)


def _rows(summary, tmp_path) -> pd.DataFrame:
    return Store(tmp_path).read_run(summary.run_id).rows.sort_values("index").reset_index(drop=True)


def test_every_point_is_classified_under_every_cell_as_an_independent_recomputation_finds(digits_model, tmp_path):
    summary = _evaluate(digits_model, threat_card("corruptions", **CIFAR), tmp_path)
    rows = _rows(summary, tmp_path)
    assert len(rows) == 60
    test = load_dataset("digits", "test")
    index = subset_indices(len(test), 60)  # the shard's points in its order: the draws are per position
    x, y = test.x[index], test.y[index]
    rows = rows.set_index("index").loc[index.tolist()]
    for name in CIFAR["corruptions"]:
        for severity in CIFAR["severities"]:
            cell = Cell(name, severity)
            images = SUITES["cifar10-c"].corrupt(name, x, severity, CellGrid.cell_generator(batch_seed(0, 0), cell))
            expected = (predict(digits_model, images, 10) == y).numpy()
            assert np.array_equal(rows[cell.column].to_numpy(), expected), cell
    cells = rows[[f"correct_{c}_{s}" for c in CIFAR["corruptions"] for s in CIFAR["severities"]]]
    np.testing.assert_allclose(rows["corruption_acc"], cells.mean(1))
    np.testing.assert_allclose(rows["acc_contrast"], cells[["correct_contrast_1", "correct_contrast_3"]].mean(1))
    assert summary.corruption_acc == pytest.approx(cells.to_numpy().mean())
    assert summary.headline == "corruption_acc"


def test_a_cell_gives_the_same_images_whatever_other_cells_the_card_lists(digits_model, tmp_path):
    both = _rows(_evaluate(digits_model, threat_card("corruptions", **CIFAR), tmp_path / "a"), tmp_path / "a")
    again = _rows(_evaluate(digits_model, threat_card("corruptions", **CIFAR), tmp_path / "b"), tmp_path / "b")
    pd.testing.assert_frame_equal(both.drop(columns="seconds"), again.drop(columns="seconds"))
    one = threat_card("corruptions", suite="cifar10-c", corruptions=["gaussian_noise"], severities=[3])
    alone = _rows(_evaluate(digits_model, one, tmp_path / "c"), tmp_path / "c")
    assert np.array_equal(alone["correct_gaussian_noise_3"], both["correct_gaussian_noise_3"])


def test_mnist_c_cells_default_to_the_published_severities():
    cells = CorruptionParams(suite="mnist-c").cells()
    assert len(cells) == 15 and Cell("shot_noise", 5) in cells and Cell("glass_blur", 1) in cells
    assert len(CorruptionParams(suite="cifar10-c").cells()) == 75
    assert len(CorruptionParams(suite="cifar10-c", corruptions=["all"]).cells()) == 95


@pytest.mark.parametrize("params, message", [
    ({"suite": "cifar10-c", "corruptions": ["gausian_noise"]}, "gaussian_noise"),
    ({"suite": "cifar10-c", "severities": [0, 1]}, "1 to 5"),
    ({"suite": "cifar10-c", "corruptions": ["fog", "fog"]}, "twice"),
    ({"suite": "imagenet-c", "source": "files"}, "no file layout"),
    ({"suite": "mnist-c", "corruptions": ["fog"], "files": "x"}, "source: files"),
])
def test_bad_corruption_params_are_refused_with_the_fix(params, message):
    with pytest.raises(CardError, match=message):
        make_threat(threat_card("corruptions", **params))


def test_a_suite_for_another_image_size_says_so(digits_model, tmp_path):
    card = threat_card("corruptions", suite="mnist-c", corruptions=["shear"])
    with pytest.raises(BenchError, match="28x28"):
        _evaluate(digits_model, card, tmp_path, n=10)


def test_the_board_normalises_errors_by_the_named_baseline_and_shows_the_cells(digits_card, tmp_path):
    card = threat_card("corruptions", **CIFAR, baseline="digits-cnn")
    base = _evaluate(str(digits_card), card, tmp_path)
    other = _evaluate(tiny_digits_model(seed=1, epochs=3), card, tmp_path, model_name="weak-digits")
    board = build_board(Store(tmp_path))
    (block,) = board.blocks
    rows = {row["model"]: row for row in block.rows}
    assert rows["digits-cnn"]["mce"] == pytest.approx(1.0) and rows["digits-cnn"]["relative_mce"] == pytest.approx(1.0)
    b, o = _rows(base, tmp_path), _rows(other, tmp_path)
    ce = [(1 - o[[f"correct_{c}_1", f"correct_{c}_3"]].to_numpy()).sum() /
          (1 - b[[f"correct_{c}_1", f"correct_{c}_3"]].to_numpy()).sum() for c in CIFAR["corruptions"]]
    assert rows["weak-digits"]["mce"] == pytest.approx(np.mean(ce))
    assert rows["weak-digits"]["mce_ci_low"] <= rows["weak-digits"]["mce"] <= rows["weak-digits"]["mce_ci_high"]
    text = render(board)
    assert "relative_mce" in text
    assert "accuracy (%) per corruption and level" in text and "gaussian_noise" in text


def test_mce_is_missing_without_a_single_baseline_run(digits_model, tmp_path):
    _evaluate(digits_model, threat_card("corruptions", **CIFAR, baseline="not-run"), tmp_path)
    (block,) = build_board(Store(tmp_path)).blocks
    assert np.isnan(block.rows[0]["mce"])


def test_normalised_errors_by_hand():
    def run(model, clean, cells):
        return BoardRun(model, pd.DataFrame({"index": range(4), "clean_correct": clean, **cells}))

    base = run("b", [1, 1, 1, 0], {"correct_a_1": [1, 0, 0, 0], "correct_a_2": [1, 1, 0, 0],
                                   "correct_b_1": [1, 1, 1, 0]})
    model = run("m", [1, 1, 1, 1], {"correct_a_1": [1, 1, 0, 0], "correct_a_2": [1, 1, 1, 0],
                                    "correct_b_1": [1, 1, 1, 1]})
    out = normalised_errors(model, base)
    # errors per cell (mean over the 4 points), model / baseline: a_1 .5 / .75, a_2 .25 / .5, b_1 0 / .25; clean 0 / .25
    # CE_a = .75 / 1.25, CE_b = 0: mCE .3. Relative CE_b = (0 - 0) / (.25 - .25) is undefined, so relative mCE is too.
    assert out["mce"].value == pytest.approx(0.3) and out["mce"].n == 4
    assert "relative_mce" not in out
    model.rows["correct_b_1"] = [1, 1, 1, 0]
    base.rows["clean_correct"] = [1, 1, 1, 1]
    out = normalised_errors(model, base)  # relative CE_a = (.75 - 0) / 1.25, CE_b = .25 / .25
    assert out["relative_mce"].value == pytest.approx((0.6 + 1.0) / 2)


def test_a_corruption_that_does_not_hurt_the_baseline_leaves_relative_mce_undefined_not_huge():
    # the baseline's errors on a's two levels (.1, .2) add up to twice its clean error (.15) up to float noise
    # (0.1 + 0.2 - 2 * 0.15 = 5.6e-17): relative CE_a is undefined, not 10^16
    base_err, base_clean = np.array([[0.1, 0.2, 0.5]]), np.array([0.15])
    err, clean = np.array([[0.3, 0.3, 0.4]]), np.array([0.1])
    ce, rel = _ratios(err, clean, base_err, base_clean, [np.array([0, 1]), np.array([2])])
    assert ce[0].mean() == pytest.approx((0.6 / 0.3 + 0.4 / 0.5) / 2) and np.isnan(rel[0, 0])


def test_the_ood_family_scores_every_shift_and_strength(digits_model, tmp_path):
    card = threat_card("ood", shifts=["darker", "rotation"], strengths={"darker": [0.5, 0.2]})
    summary = _evaluate(digits_model, card, tmp_path)
    rows = _rows(summary, tmp_path)
    test = load_dataset("digits", "test")
    index = torch.from_numpy(rows["index"].to_numpy().copy())
    x, y = test.x[index], test.y[index]
    expected = (predict(digits_model, SHIFTS.get("darker")(x, 0.2), 10) == y).numpy()
    assert np.array_equal(rows["correct_darker_2"], expected)
    assert len([c for c in rows if c.startswith("correct_rotation_")]) == len(SHIFTS.get("rotation").strengths)
    assert summary.headline == "ood_acc" and 0 <= summary.ood_acc <= 1
    with pytest.raises(CardError, match="not evaluated"):
        make_threat(threat_card("ood", shifts=["darker"], strengths={"blur": [1.0]}))


# --- corrupted files ------------------------------------------------------------------------------------


def _cifar_files(folder, n=6, dtype=np.uint8, labels=None, shape=(32, 32, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (5 * n, *shape)).astype(dtype)
    np.save(folder / "fog.npy", images)
    np.save(folder / "labels.npy", np.tile(np.arange(n) % 10, 5).astype(np.uint8) if labels is None else labels)
    return images


def test_published_cifar10_c_files_are_read_by_severity_with_their_labels_checked(tmp_path):
    images = _cifar_files(tmp_path / "CIFAR-10-C")
    files = CorruptedFiles(LAYOUTS["cifar10-c"], tmp_path / "CIFAR-10-C")
    out = files.images("fog", 3, torch.tensor([4, 1]), torch.tensor([4, 1]))
    expected = torch.from_numpy(images[[2 * 6 + 4, 2 * 6 + 1]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(out, expected) and files.generated is None
    with pytest.raises(DataError, match="disagree"):
        files.images("fog", 3, torch.tensor([4, 1]), torch.tensor([4, 2]))
    with pytest.raises(DataError, match="zenodo"):
        files.images("snow", 1, torch.tensor([0]), torch.tensor([0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": np.float32}, "uint8"),
    ({"shape": (28, 28, 1)}, r"\(30, 32, 32, 3\)"),
    ({"labels": np.zeros(7, dtype=np.uint8)}, "severities of equal size"),
])
def test_a_wrong_layout_is_refused_with_how_to_get_the_files(tmp_path, kwargs, message):
    _cifar_files(tmp_path / "CIFAR-10-C", **kwargs)
    files = CorruptedFiles(LAYOUTS["cifar10-c"], tmp_path / "CIFAR-10-C")
    with pytest.raises(DataError, match=message) as err:
        files.images("fog", 1, torch.tensor([0]), torch.tensor([0]))
    assert "bench data make cifar10-c" in err.value.fix


def test_a_pickled_file_is_refused(tmp_path):
    _cifar_files(tmp_path / "CIFAR-10-C")
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.array([{"x": 1}] * 30, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain .npy"):
        CorruptedFiles(LAYOUTS["cifar10-c"], tmp_path / "CIFAR-10-C").images("fog", 1, torch.tensor([0]),
                                                                                 torch.tensor([0]))


def test_bench_data_make_writes_marked_files_that_runs_read_and_call_generated(tmp_path, monkeypatch):
    import bench.families.corruptions.files as files_module

    mnist = load_dataset("mnist", "test")
    small = type(mnist)("mnist", "test", mnist.x[:24], mnist.y[:24], mnist.classes)
    monkeypatch.setattr(files_module, "load_dataset", lambda name, split, root=None: small)
    result = CliRunner().invoke(app, ["data", "make", "mnist-c", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "mnist_c-generated"
    assert "not the published files" in result.output
    marker = json.loads((folder / "GENERATED.json").read_text())
    assert "NOT the published" in marker["warning"] and len(marker["corruptions"]) == 15
    stored = np.load(folder / "fog" / "test_images.npy")
    assert stored.shape == (24, 28, 28, 1) and stored.dtype == np.uint8
    expected = SUITES["mnist-c"].corrupt("fog", small.x, 5, CellGrid.cell_generator(0, Cell("fog", 5)))
    assert np.array_equal(stored, torch.round(expected * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    card = threat_card("corruptions", suite="mnist-c", source="files", files=str(folder),
                       corruptions=["fog", "stripe"])
    summary = bench.evaluate(model, card, x=small.x, y=small.y, results=tmp_path / "res", progress=False)
    assert summary.n == 24 and any("generated by `bench data make`" in note for note in summary.notes)
    again = CliRunner().invoke(app, ["data", "make", "mnist-c", "--data-root", str(tmp_path), "--seed", "1"])
    assert again.exit_code != 0 and "other settings" in again.output

    # a card naming no folder reads the generated one where the published one is absent, and says so
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    default = threat_card("corruptions", suite="mnist-c", source="files", corruptions=["fog"])
    _, threat = make_threat(default)
    assert threat.protocol(threat.params)["generated_files"] is True
    again = bench.evaluate(model, default, x=small.x, y=small.y, results=tmp_path / "res2", progress=False)
    assert any(f"{folder} was generated" in note for note in again.notes)


def test_a_files_card_without_its_files_fails_before_any_point_is_run(digits_model, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "empty"))
    card = threat_card("corruptions", suite="mnist-c", source="files", corruptions=["fog"])
    mnist = load_dataset("mnist", "test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(DataError, match="does not exist") as error:
        bench.evaluate(model, card, x=mnist.x[:8], y=mnist.y[:8], results=tmp_path / "res", progress=False)
    assert "bench data make mnist-c" in error.value.fix
    assert not Store(tmp_path / "res").run_ids()  # refused before the run was opened


def _board_run(model: str, clean: list[int], cells: dict[str, list[int]]) -> BoardRun:
    return BoardRun(model, pd.DataFrame({"index": range(len(clean)), "clean_correct": clean, **cells}))


def test_the_cell_table_lists_levels_in_order_with_the_mean_last_and_no_nan():
    run = _board_run("m", [1, 1], {"correct_fog_5": [1, 0], "correct_fog_1": [1, 1], "correct_snow_3": [0, 0],
                                   "correct_snow_1": [1, 0]})
    text = cell_table({"r": run}, "corruption")
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["model", "corruption", "level 1", "level 3",
                                                                   "level 5", "mean"]
    assert "nan" not in text
    fog = next(line for line in text.splitlines() if "| fog" in line)
    assert [v.strip() for v in fog.strip("|").split("|")][2:] == ["100.0", "-", "50.0", "75.0"]


def test_one_level_per_corruption_gets_a_level_column_not_a_column_per_level():
    run = _board_run("m", [1, 1], {"correct_shear_5": [1, 0], "correct_fog_4": [1, 1]})
    text = cell_table({"r": run}, "corruption")
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["model", "corruption", "level", "accuracy"]
    assert "nan" not in text and "| fog" in text


def test_mce_averages_the_benchmark_corruptions_and_keeps_the_extra_ones_beside_it():
    base = _board_run("b", [1, 1, 1, 1], {"correct_fog_1": [1, 0, 0, 0], "correct_spatter_1": [1, 1, 0, 0]})
    model = _board_run("m", [1, 1, 1, 1], {"correct_fog_1": [1, 1, 0, 0], "correct_spatter_1": [0, 0, 0, 0]})
    out = normalised_errors(model, base, benchmark={"fog"})
    assert out["mce"].value == pytest.approx(0.5 / 0.75)  # fog only
    assert out["mce_extra"].value == pytest.approx(1.0 / 0.5)  # spatter, beside it
    assert normalised_errors(model, base)["mce"].value == pytest.approx((0.5 / 0.75 + 1.0 / 0.5) / 2)
    specs, values = mce_columns("b", {"rb": base, "rm": model}, {"fog"})
    assert [s.name for s in specs] == ["mce", "relative_mce", "mce_extra", "relative_mce_extra"]
    assert values["rm"]["mce"].value == pytest.approx(0.5 / 0.75)


def test_the_error_table_says_why_relative_mce_is_undefined():
    base = _board_run("b", [1, 1, 0, 0], {"correct_fog_1": [1, 0, 0, 0], "correct_shear_1": [1, 1, 0, 0]})
    model = _board_run("m", [1, 1, 1, 0], {"correct_fog_1": [1, 1, 0, 0], "correct_shear_1": [1, 1, 1, 0]})
    assert "relative_mce" not in normalised_errors(model, base)  # shear does not hurt b: 50% error = its clean error
    text = error_table("b", {"rb": base, "rm": model}, "corruption")
    assert "relative CE is undefined (-) for shear" in text and "b's error" in text
    fog = next(line for line in text.splitlines() if "| m " in line and "fog" in line)
    # fog: CE .5 / .75; relative (.5 - .25) / (.75 - .5) = 1
    assert [v.strip() for v in fog.strip("|").split("|")][2:] == ["0.667", "1.000"]
    assert error_table("not-run", {"rb": base}, "corruption") == ""
