"""Adversarial inputs as tensors (``bench.attack``) and stored beside a run (``--save-adv``): they are the inputs
the rows scored, re-scoring them gives the stored predictions, a run stored without them gets them only if
recomputing gives its rows, and a damaged file is refused."""
from __future__ import annotations

import pytest
import torch

import bench
from bench.data import load_dataset
from bench.errors import BenchError
from bench.store import Store, StoreError
from test_ensemble import MEMBERS, write

KW = dict(batch_size=20, device="cpu", threads=1)


@pytest.fixture
def points():
    data = load_dataset("digits", "test")
    return data.x[:40], data.y[:40]


def _predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("threat", ["pgd-weak", "latent", "ensemble"])
def test_attack_returns_the_inputs_its_rows_scored(digits_model, points, tmp_path, threat):
    x, y = points
    cards = {name: write(tmp_path, name, card) for name, card in MEMBERS.items()}
    cards["ensemble"] = write(tmp_path, "ensemble", {"family": "ensemble", "params": {
        "members": ["pgd-weak.yaml", "latent.yaml", "random.yaml"]}})
    out = bench.attack(digits_model, cards[threat], x, y, dataset="digits", **KW)
    right = torch.tensor(out.rows["clean_correct"].to_numpy(dtype=bool))
    assert out.x_adv.shape == x.shape and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert torch.equal(_predict(digits_model, out.x_adv)[right], out.adv_pred[right])
    assert torch.equal(out.x_adv[~right], x[~right])  # nothing attacked where the model was wrong already
    assert 0 < int((~out.robust & right).sum()) and not torch.equal(out.x_adv, x)
    if threat == "pgd-weak":
        assert (out.x_adv - x).abs().max() <= 0.1 + 1e-6
    summary = bench.evaluate(digits_model, cards[threat], x=x, y=y, dataset="digits", progress=False,
                             results=tmp_path / "r", **KW)
    assert summary.metrics["robust_acc"].value == pytest.approx(float(out.robust.float().mean()))


def test_save_adv_stores_inputs_that_rescore_to_the_stored_rows(digits_model, points, tmp_path):
    x, y = points
    card = write(tmp_path, "pgd-weak", MEMBERS["pgd-weak"])
    run = dict(x=x, y=y, dataset="digits", progress=False, results=tmp_path / "r", **KW)
    summary = bench.evaluate(digits_model, card, save_adv=True, **run)
    index, x_adv = bench.saved_inputs(summary.run_id, tmp_path / "r")
    rows = Store(tmp_path / "r").read_run(summary.run_id).rows.set_index("index").loc[index.numpy()]
    right = torch.tensor(rows["clean_correct"].to_numpy(dtype=bool))
    assert torch.equal(_predict(digits_model, x_adv)[right], torch.tensor(rows["adv_pred"].to_numpy())[right])
    assert torch.equal(x_adv, bench.attack(digits_model, card, x, y, dataset="digits", **KW).x_adv)


def test_a_run_stored_without_inputs_gets_them_when_recomputing_gives_its_rows(digits_model, points, tmp_path):
    x, y = points
    card = write(tmp_path, "pgd-weak", MEMBERS["pgd-weak"])
    first = dict(x=x, y=y, dataset="digits", progress=False, **KW)
    summary = bench.evaluate(digits_model, card, results=tmp_path / "a", **first)
    with pytest.raises(StoreError, match="no saved adversarial inputs"):
        bench.saved_inputs(summary.run_id, tmp_path / "a")
    bench.evaluate(digits_model, card, results=tmp_path / "a", save_adv=True, **first)
    fresh = bench.evaluate(digits_model, card, results=tmp_path / "b", save_adv=True, **first)
    assert fresh.run_id == summary.run_id
    assert torch.equal(bench.saved_inputs(summary.run_id, tmp_path / "a")[1],
                       bench.saved_inputs(fresh.run_id, tmp_path / "b")[1])


def test_inputs_that_do_not_match_the_rows_or_their_checksum_are_refused(digits_model, points, tmp_path):
    import pyarrow.parquet as pq

    x, y = points
    card = write(tmp_path, "pgd-weak", MEMBERS["pgd-weak"])
    run = dict(x=x, y=y, dataset="digits", progress=False, results=tmp_path / "r", **KW)
    summary = bench.evaluate(digits_model, card, save_adv=True, **run)
    store = Store(tmp_path / "r")
    path = store.inputs_path(summary.run_id, 0)
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    with pytest.raises(StoreError, match="does not match the checksum"):
        bench.saved_inputs(summary.run_id, tmp_path / "r")
    path.unlink()  # then rows that recomputing does not give: a forged robust point
    shard = store.shard_path(summary.run_id, 0)
    table = pq.read_table(shard)
    flipped = table.set_column(table.schema.get_field_index("adv_pred"), "adv_pred",
                               [[(v + 1) % 10 for v in table.column("adv_pred").to_pylist()]])
    store.write_shard(summary.run_id, 0, flipped, {})
    with pytest.raises(BenchError, match="other rows than the stored ones"):
        bench.evaluate(digits_model, card, save_adv=True, **run)


def test_a_threat_without_adversarial_inputs_says_so(digits_model, points, tmp_path):
    x, y = points
    with pytest.raises(BenchError, match="makes no adversarial inputs"):
        bench.evaluate(digits_model, "clean", x=x, y=y, dataset="digits", progress=False, save_adv=True,
                       results=tmp_path / "r", **KW)
