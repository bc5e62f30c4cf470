"""The perturb step and the ensemble family: per-point draws that do not depend on which points are attacked, an
ensemble whose robust flag is the members' own runs combined point by point while each member attacks only
the survivors, per-member "broken by" counts, and members checked before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import bench
from bench.errors import BenchError, CardError
from bench.implementation import implementation
from bench.ops.draws import Draws
from bench.store import Store
from bench.tasks import TASKS
from bench.threats import make_threat
from bench.threats.pgd import PGD

MODELS = Path(__file__).parent / "fingerprints" / "models"
KW = dict(n=60, batch_size=30, device="cpu", threads=1, progress=False)
MEMBERS = {
    "pgd-weak": {"family": "pgd", "params": {"norm": "Linf", "eps": 0.1, "steps": 2, "step_size": 0.02}},
    "latent": {"family": "learned-cvae-pgd", "params": {"cvae": str(MODELS / "digits-cvae.yaml"), "eps": 1.5,
                                                     "steps": 5, "restarts": 2}},
    "random": {"family": "learned-cvae-random", "params": {"cvae": str(MODELS / "digits-cvae.yaml"), "eps": 1.5,
                                                            "samples": 30, "chunk": 200}},
    "transfer": {"family": "learned-cvae-transfer",
                 "params": {"cvae": str(MODELS / "digits-cvae.yaml"), "eps": 1.5, "steps": 5,
                            "source": str(MODELS / "digits-cnn-b.yaml")}},
    "pgd-strong": {"family": "pgd", "params": {"norm": "Linf", "eps": 0.1, "steps": 10, "restarts": 2}},
}


def write(folder: Path, name: str, card: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"id": name, **card}))
    return str(path)


@pytest.fixture
def cards(tmp_path) -> dict[str, str]:
    out = {name: write(tmp_path, name, card) for name, card in MEMBERS.items()}
    out["ensemble"] = write(tmp_path, "ensemble", {"family": "ensemble",
                                                   "params": {"members": [f"{m}.yaml" for m in MEMBERS]}})
    return out


def test_draws_for_a_subset_are_the_subset_of_the_draws_for_all():
    every = Draws(torch.Generator().manual_seed(3), 6)
    assert torch.equal(every.randn((2, 2)), torch.randn((6, 2, 2), generator=torch.Generator().manual_seed(3)))
    rows = torch.tensor([1, 4])
    for lead in ((), (3,)):
        full = Draws(torch.Generator().manual_seed(5), 6).rand((2,), lead=lead)
        some = Draws(torch.Generator().manual_seed(5), 6, rows).rand((2,), lead=lead)
        assert some.shape[len(lead)] == 2 and torch.equal(some, full.index_select(len(lead), rows))


def test_the_ensemble_is_its_members_runs_combined_point_by_point(cards, tmp_path):
    model = str(MODELS / "digits-cnn.yaml")
    separate = {name: bench.evaluate(model, cards[name], results=tmp_path / "r", **KW) for name in MEMBERS}
    together = bench.evaluate(model, cards["ensemble"], results=tmp_path / "r", **KW)
    store = Store(tmp_path / "r")
    combined = None
    for summary in separate.values():
        robust = store.read_run(summary.run_id).rows.set_index("index")["robust"]
        combined = robust if combined is None else combined & robust
    rows = store.read_run(together.run_id).rows.set_index("index").loc[combined.index]
    assert rows["robust"].equals(combined)
    assert 0 < together.robust_acc < min(s.robust_acc for s in separate.values())  # strictly more than any one
    broken = rows[[f"broken_by_{k}" for k in range(len(MEMBERS))]]
    assert (broken.sum(axis=1) <= 1).all()  # a point is broken by one member at most
    assert broken.any(axis=1).equals(rows["clean_correct"] & ~rows["robust"])
    for k, name in enumerate(MEMBERS):
        assert together.stats[f"broken_by:{name}"] == int(broken[f"broken_by_{k}"].sum())
        assert together.metrics[f"broken_by_{k}"].value == broken[f"broken_by_{k}"].mean()


def test_each_member_attacks_only_the_survivors(cards, tmp_path, monkeypatch):
    sizes = []
    real = PGD.perturb
    monkeypatch.setattr(PGD, "perturb", lambda self, target, x, y, draws: sizes.append(len(x)) or
                        real(self, target, x, y, draws))
    members = [write(tmp_path, "two", {"family": "ensemble", "params": {"members": [cards["pgd-weak"],
                                                                                      cards["pgd-strong"]]}})]
    summary = bench.evaluate(str(MODELS / "digits-cnn.yaml"), members[0], results=tmp_path / "r",
                             **{**KW, "batch_size": 60})
    rows = Store(tmp_path / "r").read_run(summary.run_id).rows
    assert sizes == [int(rows.clean_correct.sum()), int((rows.clean_correct & ~rows.broken_by_0).sum())]


def test_members_are_checked_before_anything_runs(cards, tmp_path):
    model = str(MODELS / "digits-cnn.yaml")
    corruptions = write(tmp_path, "grid", {"family": "corruptions", "params": {
        "suite": "cifar10-c", "corruptions": ["contrast"], "severities": [1]}})
    bad = {"not a step": ([cards["pgd-weak"], corruptions], "perturb inputs point by point"),
           "nested": ([cards["pgd-weak"], cards["ensemble"]], "not ensembles themselves"),
           "twice": ([cards["pgd-weak"], cards["pgd-weak"]], "listed twice"),
           "alone": ([cards["pgd-weak"]], "at least 2")}
    for name, (members, message) in bad.items():
        card = write(tmp_path, f"bad-{name.replace(' ', '-')}", {"family": "ensemble", "params": {"members": members}})
        with pytest.raises(CardError, match=message):
            bench.evaluate(model, card, results=tmp_path / "r", **KW)
    mnist_only = write(tmp_path, "mnist-pgd", {"family": "pgd", "datasets": ["mnist"],
                                               "params": {"norm": "Linf", "eps": 0.3, "steps": 3}})
    card = write(tmp_path, "ens-mnist", {"family": "ensemble",
                                         "params": {"members": [cards["pgd-weak"], mnist_only]}})
    with pytest.raises(BenchError, match="threat mnist-pgd is defined for mnist, not digits"):
        bench.evaluate(model, card, results=tmp_path / "r", **KW)


def test_a_members_revision_is_part_of_the_ensembles_identity(cards, monkeypatch):
    card, threat = make_threat(cards["ensemble"])
    before = implementation(card.family, threat, TASKS.get("classifier"))
    monkeypatch.setattr(PGD, "revision", PGD.revision + 1)
    assert implementation(card.family, threat, TASKS.get("classifier")) != before
    assert [m["card"] for m in before["family"]["members"]] == list(MEMBERS)


def test_the_cards_members_name_are_trained_first_and_their_weights_are_in_the_spec(cards, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    source = write(tmp_path, "source", {"dataset": "digits", "architecture": {"name": "small-cnn",
                                                                              "kwargs": {"input_size": 8}},
                                        "recipe": {"name": "standard", "seed": 1, "params": {"epochs": 1}}})
    transfer = write(tmp_path, "transfer-trained", {"family": "learned-cvae-transfer", "params": {
        **MEMBERS["transfer"]["params"], "source": source}})
    card = write(tmp_path, "with-trained", {"family": "ensemble", "params": {"members": [cards["pgd-weak"],
                                                                                         transfer]}})
    summary = bench.evaluate(str(MODELS / "digits-cnn.yaml"), card, results=tmp_path / "r", **KW)
    spec = Store(tmp_path / "r").run_meta(summary.run_id)["spec"]
    assert [name.split("@")[0] for name in spec["weights"]] == ["source"]
