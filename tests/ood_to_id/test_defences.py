"""Composed models and the OOD-to-ID defence: compose cards (hash, validation, build), the translator recipe,
the gate, and the attacks that see through a defence (BPDA's straight-through gradients, transfer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.data import load_dataset, subset_indices
from bench.errors import CardError
from bench.ops.shifts import SHIFTS
from bench.families.ood_to_id.defence import TranslateThenClassify
from bench.models import load_model_card
from bench.store import Store
from bench.testing import threat_card
from bench.threats.surrogate import StraightThrough

TRANSLATOR = {
    "id": "digits-translator", "dataset": "digits", "task": "translator",
    "architecture": {"name": "residual-unet", "kwargs": {"channels": 1, "width": 4}},
    "recipe": {"name": "ood2id-translator", "seed": 0, "params": {
        "epochs": 1, "batch_size": 64, "train_subset": 256, "identity": 0.25,
        "shifts": [{"shift": "darker", "low": 0.2, "high": 0.6}]}},
}


def _write(folder, data) -> str:
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _defence(folder, digits_card, translator: str, **params) -> str:
    return _write(folder, {"id": f"digits-defence-{len(params)}", "dataset": "digits", "task": "classifier",
                           "compose": {"name": "translate-then-classify",
                                       "parts": {"classifier": str(digits_card), "translator": translator},
                                       "params": params}})


def test_a_compose_cards_hash_folds_in_its_parts_and_params(tmp_path, digits_card):
    translator = _write(tmp_path, TRANSLATOR)
    card = load_model_card(_defence(tmp_path, digits_card, translator))
    same = load_model_card(_defence(tmp_path, digits_card, translator))
    gated = load_model_card(_defence(tmp_path, digits_card, translator, gate="recon"))
    assert card.hash == same.hash and gated.hash != card.hash
    retrained = dict(TRANSLATOR, recipe={**TRANSLATOR["recipe"], "seed": 1})
    (tmp_path / "b").mkdir()
    other = load_model_card(_defence(tmp_path / "b", digits_card, _write(tmp_path / "b", retrained)))
    assert other.hash != card.hash


def test_an_unset_compose_block_leaves_a_cards_hash_as_it_was_before_compose_existed(digits_card):
    """Cards without compose: hash what they hashed before the block was added, so their stored runs still
    match; a composed card's hash does fold the block in."""
    dumped = load_model_card(digits_card)._dump()
    assert "compose" not in dumped and {"id", "dataset", "task", "architecture", "recipe"} <= set(dumped)


@pytest.mark.parametrize("extra, message", [
    ({"architecture": {"name": "small-cnn"}}, "built from its parts"),
    ({"compose": {"name": "translate-then-classify", "parts": {"classifier": "mnist-cnn-standard"}}},
     "takes the parts classifier, translator"),
    ({"compose": {"name": "translate-then-clasify", "parts": {}}}, "translate-then-classify"),
    ({"compose": {"name": "translate-then-classify",
                  "parts": {"classifier": "mnist-cnn-standard", "translator": "mnist-cnn-standard"}}}, "translator"),
    ({"compose": {"name": "translate-then-classify", "params": {"gate": "always"},
                  "parts": {"classifier": "mnist-cnn-standard", "translator": "mnist-ood2id-translator"}}}, "gate"),
])
def test_bad_compose_cards_are_refused_with_the_fix(tmp_path, extra, message):
    data = {"id": "bad", "dataset": "mnist", "task": "classifier",
            "compose": {"name": "translate-then-classify",
                        "parts": {"classifier": "mnist-cnn-standard", "translator": "mnist-ood2id-translator"}}}
    with pytest.raises(CardError, match=message):
        load_model_card(_write(tmp_path, data | extra)).hash


def test_bench_train_on_a_compose_card_says_to_train_its_parts():
    result = CliRunner().invoke(app, ["train", "mnist-cnn-ood2id"])
    assert result.exit_code != 0
    assert "composed from other cards" in result.output and "bench train mnist-ood2id-translator" in result.output


def test_the_translator_recipe_makes_identity_and_shifted_pairs():
    card = load_model_card("mnist-ood2id-translator")
    recipe = card.make_recipe()
    recipe.classifier = None
    recipe.params = recipe.params.model_copy(update={"adversarial": None, "classifier": None})
    x = load_dataset("digits28", "test").x[:40]
    out = recipe.pairs(x, torch.zeros(40, dtype=torch.int64), torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    assert int(same.sum()) >= 10  # a quarter kept as identity pairs (a shifted blank image can equal it too)
    darker = [i for i in range(40) if not same[i] and torch.allclose(out[i], x[i] * (out[i].sum() / x[i].sum()))]
    assert darker, "some pairs are darkened copies"


def test_a_defence_trains_its_translator_on_first_use_and_the_gate_translates_as_calibrated(tmp_path, digits_card,
                                                                                            digits_model):
    translator = _write(tmp_path, TRANSLATOR)
    plain = bench.load_model(_defence(tmp_path, digits_card, translator))
    assert isinstance(plain, TranslateThenClassify) and not plain.gated
    x = load_dataset("digits", "test").x[:50]
    with torch.no_grad():
        torch.testing.assert_close(plain(x), digits_model(plain.translator(x)))
    gated = bench.load_model(_defence(tmp_path, digits_card, translator, gate="recon", quantile=0.8,
                                      calibration=200))
    train = load_dataset("digits", "train")
    calibration = train.x[subset_indices(len(train), 200)]
    rate = float(gated.translated(calibration).float().mean())
    assert 0.15 <= rate <= 0.2 + 1e-6  # the share above the 80th percentile of the calibration scores
    dark = SHIFTS.get("darker")(x, 0.2)
    with torch.no_grad():
        chosen = gated.translated(dark)
        expected = torch.where(chosen.view(-1, 1), digits_model(gated.translator(dark)), digits_model(dark))
        torch.testing.assert_close(gated(dark), expected)


def test_straight_through_is_the_model_forward_and_the_surrogate_backward(digits_model):
    x = load_dataset("digits", "test").x[:8].requires_grad_(True)
    surrogate = torch.nn.Sequential(torch.nn.Upsample(scale_factor=1), digits_model)
    blocked = lambda z: digits_model(torch.round(z * 16) / 16)  # noqa: E731  (zero gradient almost everywhere)

    class Rounded(torch.nn.Module):
        def forward(self, z):
            return blocked(z)

    model = StraightThrough(Rounded(), surrogate)
    out = model(x)
    torch.testing.assert_close(out, blocked(x))
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    (expected,) = torch.autograd.grad(surrogate(x)[:, 0].sum(), x)
    torch.testing.assert_close(grad, expected)
    assert grad.abs().sum() > 0


def test_bpda_breaks_a_gate_that_hides_gradients_and_pgd_does_not(digits_model, tmp_path):
    class Quantised(torch.nn.Module):
        """Rounds inputs to 4 bits before the classifier: no gradient for PGD; BPDA goes straight through."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 16) / 16)

        def bpda_surrogate(self):
            return self.inner

    kw = dict(dataset="digits", n=60, results=tmp_path, progress=False)
    params = {"norm": "Linf", "eps": 0.3, "steps": 20, "step_size": 0.03}
    pgd = bench.evaluate(Quantised(digits_model), threat_card("pgd", **params), **kw)
    bpda = bench.evaluate(Quantised(digits_model), threat_card("pgd-bpda", **params), **kw)
    assert bpda.robust_acc < 0.1 < pgd.robust_acc - 0.3
    assert any("input gradient is exactly zero" in note for note in pgd.notes)
    plain = bench.evaluate(digits_model, threat_card("pgd-bpda", **params), **kw)
    assert any("ran as plain PGD" in note for note in plain.notes) and plain.robust_acc < 0.1
    apgd = bench.evaluate(Quantised(digits_model), threat_card("apgd-bpda", norm="Linf", eps=0.3, steps=20), **kw)
    assert apgd.robust_acc <= bpda.robust_acc < 0.1  # APGD through the surrogate: at least as strong
    plain = bench.evaluate(digits_model, threat_card("apgd-bpda", norm="Linf", eps=0.3, steps=20), **kw)
    assert any("ran as plain APGD" in note for note in plain.notes)


def test_transfer_from_the_model_itself_is_never_stronger_than_white_box_pgd(digits_card, tmp_path):
    params = {"norm": "Linf", "eps": 0.15, "steps": 10, "step_size": 0.03}
    kw = dict(n=100, results=tmp_path, progress=False)
    white = bench.evaluate(str(digits_card), threat_card("pgd", **params), **kw)
    transfer = bench.evaluate(str(digits_card), threat_card("pgd-transfer", **params, source=str(digits_card)), **kw)
    store = Store(tmp_path)
    rows = {s.threat: store.read_run(s.run_id).rows.set_index("index")["robust"] for s in (white, transfer)}
    robust_white, robust_transfer = rows[white.threat], rows[transfer.threat].loc[rows[white.threat].index]
    assert not (robust_white & ~robust_transfer).any() and np.isclose(transfer.clean_acc, white.clean_acc)
    assert transfer.robust_acc < transfer.clean_acc - 0.2


def test_the_board_ranks_a_defence_by_its_worst_adaptive_attack_never_by_transfer(tmp_path, digits_card):
    from bench.leaderboard.table import build_board, render

    defence = _defence(tmp_path, digits_card, _write(tmp_path, TRANSLATOR))
    params = {"norm": "Linf", "eps": 0.2, "steps": 5, "step_size": 0.05}
    kw = dict(n=40, results=tmp_path / "res", progress=False)
    pgd = bench.evaluate(defence, threat_card("pgd", **params), **kw)
    bpda = bench.evaluate(defence, threat_card("pgd-bpda", **params), **kw)
    transfer = bench.evaluate(defence, threat_card("pgd-transfer", **params, source=str(digits_card)), **kw)
    bench.evaluate(str(digits_card), threat_card("pgd", **params), **kw)  # a bare model: not a defence
    board = build_board(Store(tmp_path / "res"))
    (row,) = board.defences
    assert row["model"] == "digits-defence-0" and row["ball"].eps == 0.2
    assert row["adaptive"][0] == min(pgd.robust_acc, bpda.robust_acc)
    assert row["non_adaptive"] == (transfer.robust_acc, "test-pgd-transfer")
    text = render(board)
    assert "ranked by their worst adaptive attack" in text
    assert "pgd-transfer, protocol" in text and "non-adaptive: not a defence's robustness" in text
