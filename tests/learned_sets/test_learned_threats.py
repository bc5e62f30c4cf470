"""Learned perturbation sets as cards, recipes and threats: training, statistics, the learned-cvae
attack, latent smoothing, quality runs and the board, on tiny digits and a tiny CIFAR-10 sample."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bench
from bench.threats import make_threat
from bench.families.learned_sets.smoothing import class_counts, clopper_pearson_lower
from bench.errors import BenchError, CardError
from bench.models import load_model_card
from bench.training import build_trained
from bench.families.learned_sets.sets import latent_stats, parse_eps, radius_option

DIGITS_CVAE = {
    "id": "digits-rts-cvae", "dataset": "digits", "task": "perturbation-set",
    "architecture": {"name": "cvae-stn", "kwargs": {"channels": 1, "side": 8, "latent": 8, "width": 8}},
    "recipe": {"name": "cvae", "seed": 0, "params": {
        "epochs": 10, "batch_size": 64, "train_subset": 800, "val_size": 100, "stats_passes": 2,
        "pairs": {"kind": "rts", "rotation": 30, "scale": [0.8, 1.2], "translate": 0.1},
        "lr_schedule": {"knots": [0, 2, 10], "values": [0.001, 0.003, 0.0]},
        "beta": {"knots": [0, 4], "values": [0.0, 1.0]}}},
}


def write_card(folder, data) -> str:
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learned-cards")
    cvae = write_card(folder, DIGITS_CVAE)
    classifier = {"dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}}}
    common = {"epochs": 10, "batch_size": 64, "lr": 0.005, "train_subset": 600}
    recipes = {
        "standard": {"name": "standard", "params": common},
        "rts-aug": {"name": "perturbation-aug",
                    "params": {**common, "pairs": DIGITS_CVAE["recipe"]["params"]["pairs"]}},
        "cvae-aug": {"name": "cvae-aug", "params": {**common, "cvae": f"{DIGITS_CVAE['id']}.yaml"}},
        "cvae-smoothing": {"name": "cvae-smoothing", "params": {**common, "cvae": cvae, "sigma": 0.5}},
        "cvae-adv": {"name": "cvae-adv", "params": {**common, "cvae": cvae, "eps": "p75", "steps": 3}},
        "cvae-adv-apgd": {"name": "cvae-adv-apgd", "params": {**common, "cvae": cvae, "eps": "p75", "steps": 3}},
    }
    paths = {"cvae": cvae, "folder": folder}
    for name, recipe in recipes.items():
        paths[name] = write_card(folder, {"id": f"digits-{name}", **classifier, "recipe": recipe})
    return paths


@pytest.fixture(autouse=True)
def shared_cache(monkeypatch, tmp_path_factory):
    """Train the tiny CVAE and classifiers once for the whole module."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "learned-cache"))


def learned_threat(cvae: str, **params):
    return bench.testing.threat_card("learned-cvae-pgd", cvae=cvae, **params)


def test_cvae_card_trains_resumably_and_gives_ordered_statistics(cards):
    card = load_model_card(cards["cvae"])
    model = build_trained(card)
    assert not model.training
    stats = latent_stats(card)
    assert len(stats.distances) == 100 * 2
    s = stats.summary()
    assert 0 < s["p25"] <= s["p50"] <= s["p75"] <= s["max"]
    assert stats.resolve("p50") == pytest.approx(s["p50"]) and stats.resolve(2.5) == 2.5
    assert np.array_equal(latent_stats(card).distances, stats.distances)  # cached


def test_eps_specs_are_checked():
    assert parse_eps("p75") == "p75" and parse_eps(3) == 3.0 and parse_eps("p99.9") == "p99.9"
    assert parse_eps("2.5") == 2.5  # as typed on the command line
    for bad in ("p750", "median", -1, "-1", float("nan"), "nan", True):
        with pytest.raises(ValueError):
            parse_eps(bad)
    with pytest.raises(BenchError, match="p50, p75"):  # typed by a user: a clear error, not a ValueError
        radius_option("median")


def test_cli_stats_json(cards):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["perturbation", "stats", cards["cvae"], "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert set(yaml.safe_load(result.output)) >= {"mean", "std", "p25", "p50", "p75", "max"}


def test_cli_samples_draws_the_set_as_an_image_grid(cards, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path / "set.png"
    args = ["perturbation", "samples", cards["cvae"], "--out", str(out), "--n", "5", "--draws", "2",
            "--eps", "p50", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    side, pad = 8, 2  # digits are 8x8; torchvision pads 2 px around every tile
    with Image.open(out) as image:
        assert image.size == (5 * (side + pad) + pad, (3 + 2) * (side + pad) + pad)
    assert not list(tmp_path.glob(".*part*"))
    bad = CliRunner().invoke(app, ["perturbation", "samples", cards["cvae"], "--out", str(tmp_path / "set.txt")])
    assert bad.exit_code != 0 and "name a .png" in bad.output


def test_downstream_recipes_train_and_the_cvae_hash_is_part_of_their_identity(cards, tmp_path):
    for name in ("standard", "rts-aug", "cvae-aug", "cvae-smoothing", "cvae-adv"):
        model = build_trained(cards[name])
        x, y = bench.load_data("digits", n=200)
        with torch.no_grad():
            assert (model(x).argmax(1) == y).float().mean() > 0.3, name
    card = load_model_card(cards["cvae-aug"])
    changed = {**DIGITS_CVAE, "recipe": {**DIGITS_CVAE["recipe"], "seed": 1}}
    other = tmp_path / "digits-rts-cvae.yaml"
    other.write_text(yaml.safe_dump(changed))
    moved = tmp_path / "digits-cvae-aug.yaml"  # same card; its relative cvae reference now finds the changed CVAE
    moved.write_text(Path(cards["cvae-aug"]).read_text())
    # new weights, and new results: runs are keyed by the card hash and must not resume the old weights' rows
    assert load_model_card(moved).training_hash != card.training_hash
    assert load_model_card(moved).hash != card.hash


@pytest.mark.parametrize("name", ["cvae-adv", "cvae-adv-apgd"])
def test_adversarial_loss_is_at_least_the_clean_loss(cards, name):
    from bench.recipes.base import Batch

    recipe = load_model_card(cards[name]).make_recipe()
    recipe.prepare(device=torch.device("cpu"), data_root=None)
    model = build_trained(cards["standard"])
    x, y = bench.load_data("digits", split="train", n=64)
    batch = Batch(x, y, torch.arange(64), 0.5, 1, torch.Generator().manual_seed(0))
    clean = torch.nn.functional.cross_entropy(model(x), y)
    assert recipe.loss(model, batch) >= clean - 1e-6
    assert recipe.eps == pytest.approx(latent_stats(recipe.cvae_card).resolve("p75"))


def test_learned_attack_run_is_seeded_within_the_ball_and_breaks_a_standard_model(cards, tmp_path):
    threat = learned_threat(cards["cvae"], eps="max", steps=20)
    runs = [bench.evaluate(cards["standard"], threat, n=100, seed=seed, device="cpu", results=tmp_path / str(i),
                           progress=False) for i, seed in enumerate((0, 0, 1))]
    assert runs[0].robust_acc == runs[1].robust_acc
    assert runs[0].robust_acc < runs[0].clean_acc - 0.2  # a standard model falls in the learned set
    rows = bench.store.Store(tmp_path / "0").query("SELECT latent_norm, eps, robust, clean_correct FROM rows")
    assert (rows.latent_norm <= rows.eps * (1 + 1e-5)).all()
    assert rows.eps.iloc[0] == pytest.approx(latent_stats(load_model_card(cards["cvae"])).resolve("max"))
    assert not (rows.robust & ~rows.clean_correct).any()


def test_stronger_latent_attacks_never_leave_more_points_robust(cards, tmp_path):
    def acc(eps, steps):
        return bench.evaluate(cards["cvae-adv"], learned_threat(cards["cvae"], eps=eps, steps=steps), n=100,
                              device="cpu", results=tmp_path, progress=False).robust_acc

    assert acc("max", 20) <= acc("p50", 20) + 0.03  # a larger ball (independent starts: small slack)
    assert acc(1e-6, 5) == pytest.approx(acc(1e-6, 1), abs=0.02)


def test_protocol_hash_includes_the_cvae_card(cards, tmp_path):
    changed = {**DIGITS_CVAE, "id": "digits-rts-cvae-b", "recipe": {**DIGITS_CVAE["recipe"], "seed": 5}}
    other = write_card(tmp_path, changed)
    a, b = learned_threat(cards["cvae"], eps="p50"), learned_threat(other, eps="p50")
    assert a.hash != b.hash
    assert a.hash == learned_threat(cards["cvae"], eps="p50").hash


def test_learned_threat_errors_name_the_problem(cards, digits_card):
    with pytest.raises(CardError, match="not a perturbation-set card"):
        make_threat(learned_threat(str(digits_card), eps=1.0))
    with pytest.raises(CardError, match="eps"):
        make_threat(learned_threat(cards["cvae"], eps="p500"))
    with pytest.raises(BenchError, match="learned on digits"):
        bench.evaluate("mnist-cnn-standard", learned_threat(cards["cvae"], eps=1.0), n=5, device="cpu",
                       progress=False)


def test_clopper_pearson_matches_the_exact_binomial_bound():
    from scipy.stats import binom

    lower = clopper_pearson_lower(torch.tensor([0, 50, 990, 1000]), 1000, 0.001)
    assert lower[0] == 0 and lower[3] == pytest.approx(0.001 ** (1 / 1000))
    for k, p in zip((50, 990), lower[1:3].tolist()):
        assert binom.sf(k - 1, 1000, p) == pytest.approx(0.001, rel=1e-3)  # P(X >= k | p) = alpha


class Constant(torch.nn.Module):
    """Votes for one class whatever the input, or for a random class (seeded by the input values)."""

    def __init__(self, label: int | None):
        super().__init__()
        self.label = label

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        if self.label is None:
            logits[torch.arange(len(x)), (x.flatten(1).sum(1) * 1e4).long() % 10] = 1
        else:
            logits[:, self.label] = 1
        return logits


def test_certification_abstains_below_one_half_and_certifies_the_largest_radius(cards):
    from bench.families.learned_sets.smoothing import LatentSmoothing
    from bench.tasks import TASKS
    from bench.threats import Batch, Target

    card, threat = make_threat(bench.testing.threat_card("latent-smoothing", cvae=cards["cvae"], sigma=0.5, n0=20,
                                                         n=200, alpha=0.001))
    x, y = bench.load_data("digits", n=16)
    idx = torch.arange(16)

    def run(model, clean_pred):
        clean = {"clean_pred": clean_pred, "clean_correct": clean_pred == y}
        return threat.attack(Target(model, None, TASKS.get("classifier"), 10), Batch(x, y, idx, 0, clean)).values

    sure = run(Constant(3), torch.full((16,), 3))
    expected = 0.5 * torch.distributions.Normal(0, 1).icdf(torch.tensor(0.001 ** (1 / 200)))
    assert torch.allclose(sure["cert_radius"], expected.expand(16), atol=1e-4)
    assert (sure["certified"] == (y == 3)).all() and not sure["abstain"].any()
    noisy = run(Constant(None), torch.zeros(16, dtype=torch.long))
    assert noisy["abstain"].all() and not noisy["certified"].any() and not noisy["smoothed_correct"].any()
    assert (noisy["cert_radius"] == 0).all()  # an abstention certifies nothing, and is never a class
    assert isinstance(threat, LatentSmoothing)


def test_smoothing_votes_are_seeded(cards):
    from bench.families.learned_sets.sets import load_cvae

    cvae = load_cvae(load_model_card(cards["cvae"]))
    model = build_trained(cards["cvae-smoothing"])
    x, _ = bench.load_data("digits", n=8)
    counts = [class_counts(cvae, model, x, sigma=0.5, samples=50, num_classes=10, chunk=64,
                           gen=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(counts[0], counts[1]) and (counts[0].sum(1) == 50).all()
    assert not torch.equal(counts[0], counts[2])


def test_certified_run_writes_radii_and_the_smoothed_model_is_mostly_certified(cards, tmp_path):
    threat = bench.testing.threat_card("latent-smoothing", cvae=cards["cvae"], sigma=0.5, n0=20, n=200, radius=0.2)
    summary = bench.evaluate(cards["cvae-smoothing"], threat, n=40, device="cpu", results=tmp_path, progress=False)
    rows = bench.store.Store(tmp_path).query("SELECT cert_radius, abstain, certified, smoothed_correct FROM rows")
    assert ((rows.cert_radius >= 0.2) & rows.smoothed_correct & ~rows.abstain).mean() == summary.certified_acc
    assert rows.smoothed_correct.mean() == summary.smoothed_acc and rows.abstain.mean() == summary.abstain_rate
    assert (rows.cert_radius[rows.abstain] == 0).all()
    assert summary.headline == "certified_acc" and summary.certified_acc > 0.3


def test_perturbed_threat_is_seeded_and_held_out_families_differ_from_rts(cards, tmp_path):
    from bench.families.learned_sets.pairs import shear_pairs, thicken_pairs

    x, _ = bench.load_data("digits", n=20)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(shear_pairs(x, g()), shear_pairs(x, g()))
    assert torch.allclose(shear_pairs(x, g(), shear=0.0), x, atol=1e-5)
    thick = thicken_pairs(x, g(), shift=0)
    assert (thick >= x - 1e-6).all() and thick.sum() > x.sum()
    threat = bench.testing.threat_card("perturbed", pairs={"kind": "shear", "shear": 0.5})
    runs = [bench.evaluate(cards["standard"], threat, n=60, seed=3, device="cpu", results=tmp_path, progress=False)
            for _ in range(2)]
    assert runs[0].run_id == runs[1].run_id and runs[0].robust_acc <= runs[0].clean_acc
    with pytest.raises(CardError, match="unknown pair source"):
        make_threat(bench.testing.threat_card("perturbed", pairs={"kind": "twirl"}))


def test_set_quality_is_an_ordinary_run_on_the_board_lower_is_better(cards, tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    quality = bench.testing.threat_card("set-quality", "quality-max", eps="max")
    summary = bench.evaluate(cards["cvae"], quality, n=60, device="cpu", results=tmp_path, progress=False)
    m = {name: value.value for name, value in summary.metrics.items()}
    assert summary.headline == "pgd_ae" and not summary.specs["pgd_ae"].higher_is_better
    assert m["pgd_ae"] <= m["encoder_ae"] and min(m.values()) >= 0 and "clean_acc" not in m
    again = bench.evaluate(cards["cvae"], quality, n=60, device="cpu", results=tmp_path, progress=False)
    assert again.run_id == summary.run_id and {k: v.value for k, v in again.metrics.items()} == m
    result = CliRunner().invoke(app, ["board", "--results", str(tmp_path)])
    assert result.exit_code == 0 and "ranked by PGD approximation error, lower is better" in result.output
    assert "digits-rts-cvae" in result.output and "clean_acc" not in result.output
    held_out = bench.testing.threat_card("set-quality", eps=1.0, pairs={"kind": "shear", "shear": 0.5})
    assert bench.evaluate(cards["cvae"], held_out, n=20, device="cpu", results=tmp_path, progress=False).n == 20


def test_a_perturbation_set_is_refused_by_classifier_threats_before_training(cards, tmp_path, monkeypatch):
    import bench.training

    def no_training(*args, **kwargs):
        raise AssertionError("nothing may be trained for a refused pairing")

    monkeypatch.setattr(bench.training, "train", no_training)
    untrained = write_card(tmp_path, {**DIGITS_CVAE, "id": "untrained-cvae",
                                      "recipe": {**DIGITS_CVAE["recipe"], "seed": 99}})
    with pytest.raises(BenchError, match="evaluates classifier or generative models, but untrained-cvae is a "
                                         "perturbation-set model") as err:
        bench.evaluate(untrained, "clean", n=10, device="cpu", results=tmp_path, progress=False)
    assert "bench threats --task perturbation-set" in err.value.fix
    with pytest.raises(BenchError, match="evaluates perturbation-set models"):
        bench.evaluate(cards["standard"], "set-quality", n=10, device="cpu", results=tmp_path, progress=False)


# --- CIFAR-10: corruption-file pairs, the rectangle CVAE and the threat on a small local sample -----------

@pytest.fixture
def cifar_sample(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    from bench.families.learned_sets.pairs import CIFAR_TRAIN_CORRUPTIONS

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    splits = {}
    for name, count in [(f"data_batch_{i}", 16) for i in range(1, 6)] + [("test_batch", 24)]:
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": images.reshape(count, -1),
                                                  "labels": rng.integers(0, 10, count).tolist()}))
        splits.setdefault("test" if name == "test_batch" else "train", []).append(images)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    corrupted = tmp_path / "cifar-10-c"
    for split, parts in splits.items():
        images = np.concatenate(parts).transpose(0, 2, 3, 1).astype(np.float32)  # NHWC like CIFAR-10-C
        (corrupted / split).mkdir(parents=True)
        for i, name in enumerate(CIFAR_TRAIN_CORRUPTIONS):  # simple stand-ins: brightness / contrast shifts
            out = np.clip(images * (0.5 + i / 12) + 8 * i, 0, 255).astype(np.uint8)
            np.save(corrupted / split / f"{name}_5.npy", out)
    return tmp_path, corrupted


def test_cifar_corruption_pairs_rectangle_cvae_and_threat_end_to_end(cifar_sample):
    from bench.data import load_dataset
    from bench.families.learned_sets.pairs import parse_pairs

    root, corrupted = cifar_sample
    source = parse_pairs({"kind": "corruption-files", "root": str(corrupted)}).build("test")
    test = load_dataset("cifar10", "test")
    pairs = source(test.x[:4], torch.arange(4), torch.Generator().manual_seed(0))
    assert pairs.shape == (4, 3, 32, 32) and pairs.dtype == torch.float32 and not torch.equal(pairs, test.x[:4])
    cvae = write_card(root, {
        "id": "cifar-c-cvae", "dataset": "cifar10", "task": "perturbation-set",
        "architecture": {"name": "cvae-rectangle", "kwargs": {"latent": 8, "blocks": 1, "big": 8, "small": 4}},
        "recipe": {"name": "cvae", "seed": 0, "params": {
            "epochs": 1, "batch_size": 16, "val_size": 16, "stats_passes": 1,
            "pairs": {"kind": "corruption-files", "root": str(corrupted)},
            "beta": {"knots": [0], "values": [0.01]}}}})
    classifier = write_card(root, {
        "id": "cifar-tiny", "dataset": "cifar10",
        "architecture": {"name": "small-cnn", "kwargs": {"in_channels": 3, "input_size": 32}},
        "recipe": {"name": "cvae-adv", "params": {"epochs": 1, "batch_size": 16, "cvae": cvae, "eps": "max",
                                                  "steps": 2}}})
    summary = bench.evaluate(classifier, learned_threat(cvae, eps="p50", steps=5), n=24, batch_size=12,
                             device="cpu", progress=False)
    assert summary.n == 24 and 0 <= summary.robust_acc <= summary.clean_acc
    held_out = bench.testing.threat_card("perturbed", pairs={"kind": "corruption-files", "root": str(corrupted),
                                                             "corruptions": ["fog", "snow"]})
    assert bench.evaluate(classifier, held_out, n=24, device="cpu", progress=False).n == 24


def test_missing_corruption_files_say_how_to_make_them(tmp_path):
    from bench.families.learned_sets.pairs import parse_pairs
    from bench.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        parse_pairs({"kind": "corruption-files", "root": str(tmp_path)}).build("train")


def _points(rate: float, n: int = 200) -> dict[int, bool]:
    return {i: i < round(rate * n) for i in range(n)}


def _fake_seed(adv_p50: float, held_out_ae: float, random: float = 0.6, adv_worst: float = 0.5,
               combined_off: float = 0.0, drop: float = 0.0) -> dict:
    from bench.families.learned_sets.report import ADVERSARIAL, QUALITY, QUALITY_AFFINE, REAL, SETTINGS

    setting = SETTINGS["mnist-rts"]
    rows = {row: {c: 0.9 for c in [*setting.accuracy, *setting.attacks, *setting.paper, "smoothed", "certified"]}
            for row in setting.rows}
    for row in rows:
        rows[row]["robust @p50"] = 0.1
    rows[ADVERSARIAL]["robust @p50"] = adv_p50
    for column in ("RTS (in-family)", "shear (held out)", "thicken (held out)"):
        rows[REAL][column] = 0.85
    points = {row: {c: _points(rows[row][c]) for c in ("clean", "RTS (in-family)", "shear (held out)",
                                                      "thicken (held out)", "robust @p50")} for row in rows}

    def quality(keys):
        out = {}
        for pairs, eps in keys:
            pgd = {"p50": 0.012, "p75": 0.011, "max": 0.01}[eps] if pairs == "in-family" else held_out_ae
            out[(pairs, eps)] = {"encoder_ae": pgd * 1.2, "pgd_ae": pgd, "eae": 0.05, "recon": 0.01, "kl": 9.0,
                                 "identity": 0.06}
        return out

    def check(row: str) -> dict:
        worst = adv_worst if row == ADVERSARIAL else 0.4
        return {"robust": {"ensemble": 0.59, "paper": 0.6, "strong": 0.6, "random": random, "transfer": 0.8},
                "beaten": {"paper": 0, "strong": 0, "random": 3 if random < 0.59 else 0, "transfer": 0},
                "seconds": {"ensemble": 0.3, "paper": 0.1, "strong": 1.7, "random": 0.5, "transfer": 0.1},
                "convergence": {"drop": drop, "verdict": "converged" if drop <= 0.01 else "not converged"},
                "worst": worst, "worst_points": _points(worst), "combined": worst + combined_off}

    curve = {"radii": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], "certified": [0.9, 0.8, 0.6, 0.4, 0.2, 0.1],
             "empirical": [0.95, 0.9, 0.8, 0.7, 0.5, 0.4], "attacked": [0.9, 0.85, 0.7, 0.5, 0.3, 0.1], "n": 10000,
             "markers": {"p25": 1.5, "p50": 2.0, "p75": 2.5}}
    return {"stats": {"n": 5000.0, "mean": 2.0, "p50": 2.0, "max": 4.0}, "quality": quality(QUALITY),
            "quality_affine": quality(QUALITY_AFFINE), "rows": rows, "points": points,
            "checks": {row: check(row) for row in setting.rows if row != "standard"}, "curve": curve}


SETTINGS_SEEN = {"command": "bench perturbation report", "n_eval": 10, "n_quality": 10, "n_attack": 10,
                 "n_certify": 10, "n_check": 10, "device": "cpu", "threads": 2, "plot": "x.svg"}


def test_report_checks_the_claims_against_the_numbers():
    from bench.families.learned_sets.report import SETTINGS, render

    good = render(SETTINGS["mnist-rts"], [_fake_seed(0.7, 0.05), _fake_seed(0.8, 0.06)], [0, 1], SETTINGS_SEEN, 60.0)
    assert good.count("**PASS**") == 21 and "FAIL" not in good and "75.0 ± 7.1" in good
    assert "seed 0: 70.0% [63.1%, 76.3%] vs standard 10.0% [6.2%, 15.0%], +60.0 points [+52.6, +66.2]" in good
    assert "(seed 0: +5.0 points [+1.8, +8.1], McNemar p = 0.002 (10 vs 0 discordant of 200)" in good
    assert "0.30 s per point against 1.70 s" in good
    assert "| −0.0 ± 0.0 (converged, converged) |" in good and "| cost (s per point) | 0.30 ± 0.00 |" in good
    assert "with 2 CPU threads" in good and "## Conventions" in good and "renorm" in good
    assert "10 restarts of 200 steps" in good and "](x.svg)" in good  # the plot is embedded
    assert "| 59.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 | 80.0 ± 0.0 | 50.0 ± 0.0 |" in good  # worst last
    bad = render(SETTINGS["mnist-rts"], [_fake_seed(0.7, 0.012, random=0.3), _fake_seed(0.05, 0.012, adv_worst=0.3)],
                 [0, 1], SETTINGS_SEEN, 60.0)
    assert "**MIXED (the seeds disagree)**: CVAE adversarial training has the highest" in bad
    assert "**MIXED (the seeds disagree)**: it stays the most robust row at p50 when each point must survive" in bad
    assert "**FAIL**: similarity warps, perturbed-shear: PGD AE clearly above" in bad
    assert "**MIXED (the seeds disagree)**: no gradient attack is beaten by a gradient-free or transfer" in bad
    assert "random beats ensemble (30.0% vs 59.0%; it breaks 3 point(s) the ensemble leaves robust)" in bad
    assert "random beats paper (30.0% vs 60.0%)" in bad
    assert "twice the default ensemble's budget" in bad and "**FAIL**: twice" not in bad
    moved = render(SETTINGS["mnist-rts"], [_fake_seed(0.7, 0.05, drop=0.03)], [0], SETTINGS_SEEN, 60.0)
    assert "**FAIL**: twice the default ensemble's budget (steps and samples) moves no defended row" in moved
    assert "largest drop 3.0 points; verdicts: not converged" in moved
    off = render(SETTINGS["mnist-rts"], [_fake_seed(0.7, 0.05, combined_off=0.01)], [0], SETTINGS_SEEN, 60.0)
    assert "**FAIL**: the worst case of the ensemble card `learned-cvae-rts-p50-worst`" in off


def test_paired_comparisons_resolve_only_outside_their_interval():
    from bench.reports import UNRESOLVED, paired, verdict

    clear = paired(_points(0.7), _points(0.1))
    assert clear.diff == pytest.approx(0.6) and clear.above(0) is True and clear.p < 1e-6
    assert paired(_points(0.1), _points(0.7)).above(0) is False
    close = paired(_points(0.51), _points(0.5))
    assert close.above(0) == UNRESOLVED and close.below(0.03) is True and close.below(0.02) == UNRESOLVED
    assert verdict([True, UNRESOLVED]) == UNRESOLVED and verdict([True, False]) == "mixed"
    with pytest.raises(bench.errors.BenchError, match="same evaluation points"):
        paired(_points(0.5, 10), _points(0.5, 20))


def test_worst_case_counts_a_point_only_if_it_survives_every_attack():
    import pandas as pd

    from bench.errors import BenchError
    from bench.families.learned_sets.report import worst_case

    pgd = pd.Series([True, False, True, True], index=[7, 3, 9, 1])
    strong = pd.Series([True, False, True, True], index=[3, 7, 9, 1])  # other row order, same points
    assert worst_case({"latent PGD": pgd, "strong": strong}) == 0.5  # points 9 and 1 (by position: 0.75)
    with pytest.raises(BenchError, match="different evaluation points"):
        worst_case({"latent PGD": pgd, "strong": strong.rename(index={1: 2})})


def test_check_flags_a_masked_row_that_latent_pgd_alone_would_pass():
    """The numbers of the masked classifier in test_gradient_free_and_transfer_checks_see_through_gradient_masking."""
    from bench.families.learned_sets.report import check_flags

    masked = {"ensemble": 0.65, "paper": 0.65, "strong": 0.65, "random": 0.45, "transfer": 0.45}
    flags = check_flags(masked, {"paper": 0, "strong": 0, "random": 16, "transfer": 16})
    assert len(flags) == 6 and sum("beats ensemble" in f and "breaks 16 point(s)" in f for f in flags) == 2
    honest = {"ensemble": 0.59, "paper": 0.75, "strong": 0.60, "random": 0.85, "transfer": 0.80}
    none_beaten = {"paper": 0, "strong": 0, "random": 0, "transfer": 0}
    assert check_flags(honest, none_beaten) == []
    assert check_flags({**honest, "random": 0.7}, none_beaten) == ["random beats paper (70.0% vs 75.0%)"]
    assert "finds 9.0% more than the default ensemble" in check_flags({**honest, "strong": 0.50}, none_beaten)[0]


@pytest.mark.parametrize("name", ["mnist-rts", "mnist-rts-mild"])
def test_report_settings_use_one_cvae_throughout(name):
    """Every learned-set card of a report setting names the setting's CVAE, and its perturbed threat and
    real-augmentation row draw the same pairs as that CVAE was trained on."""
    from bench.threats.card import load_threat_card
    from bench.models.card import load_model_card
    from bench.families.learned_sets.report import SETTINGS

    setting = SETTINGS[name]
    pairs = load_model_card(setting.cvae).recipe.params["pairs"]
    assert load_model_card(setting.cvae_affine).recipe.params["pairs"] == pairs
    for model_id in setting.rows.values():
        params = load_model_card(model_id).recipe.params
        assert params.get("cvae", setting.cvae) == setting.cvae
        assert params.get("pairs", pairs) == pairs
    for threat_id in [*setting.attacks.values(), *setting.paper.values(), *setting.checks.values(), setting.certify,
                      setting.curve]:
        assert load_threat_card(threat_id).params["cvae"] == setting.cvae
    assert load_threat_card(setting.accuracy["RTS (in-family)"]).params["pairs"] == pairs


def test_schedules_interpolate_between_knots_and_validate():
    from pydantic import ValidationError

    from bench.recipes.base import Schedule

    beta = Schedule(knots=[0, 10, 50], values=[0.0, 0.01, 1.0])
    assert beta.at(0) == 0 and beta.at(5) == pytest.approx(0.005) and beta.at(30) == pytest.approx(0.505)
    assert beta.at(80) == 1.0  # constant after the last knot
    with pytest.raises(ValidationError):
        Schedule(knots=[0, 10], values=[1.0])
    with pytest.raises(ValidationError):
        Schedule(knots=[5, 5], values=[1.0, 2.0])


def test_mnist42_is_mnist_on_the_rts_canvas():
    from bench.data import load_dataset

    small, big = load_dataset("mnist", "test"), load_dataset("mnist42", "test")
    assert big.x.shape[1:] == (1, 42, 42) and torch.equal(big.y, small.y)
    assert torch.equal(big.x[:5, :, 7:35, 7:35], small.x[:5]) and big.x[:5, :, :7].sum() == 0


def test_pgd_ae_never_rises_as_the_ball_grows(cards, tmp_path):
    """The best reachable error can only fall as eps grows; the decaying step finds that on a trained set."""
    top = latent_stats(load_model_card(cards["cvae"])).resolve("max")
    errors = []
    for eps in ("p25", "p50", "max", 2 * top, 4 * top):  # large balls are where a fixed step fails
        quality = bench.testing.threat_card("set-quality", f"quality-{eps}", eps=eps)
        summary = bench.evaluate(cards["cvae"], quality, n=100, device="cpu", results=tmp_path, progress=False)
        errors.append(summary.pgd_ae)
    assert all(b <= a for a, b in zip(errors, errors[1:])), errors


class Rounding(torch.nn.Module):
    """A deliberately gradient-masked classifier: it rounds its input to 8 bits, which changes almost no
    prediction but makes every input gradient zero."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


def test_gradient_free_and_transfer_checks_see_through_gradient_masking(cards, tmp_path):
    """At a radius where the set matters (3.0; this tiny set's own max is far smaller), latent PGD on the
    masked model makes no progress past its random start, while sampling and transfer find what it misses."""
    masked = Rounding(build_trained(cards["standard"]))
    kw = dict(dataset="digits", n=80, device="cpu", results=tmp_path, progress=False)
    pgd = bench.evaluate(masked, learned_threat(cards["cvae"], eps=3.0, steps=20), **kw)
    assert any("input gradient is exactly zero" in note for note in pgd.notes)
    random = bench.evaluate(masked, bench.testing.threat_card("learned-cvae-random", cvae=cards["cvae"], eps=3.0,
                                                               samples=200), **kw)
    transfer = bench.evaluate(masked, bench.testing.threat_card("learned-cvae-transfer", cvae=cards["cvae"],
                                                                 eps=3.0, source=cards["standard"], steps=20), **kw)
    assert random.robust_acc <= pgd.robust_acc - 0.15 and transfer.robust_acc <= pgd.robust_acc - 0.15


def test_more_random_samples_never_leave_more_points_robust(cards, tmp_path):
    def robust(samples):
        card = bench.testing.threat_card("learned-cvae-random", cvae=cards["cvae"], eps="p50", samples=samples,
                                         chunk=400)
        return bench.evaluate(cards["cvae-adv"], card, n=40, device="cpu", results=tmp_path,
                              progress=False).robust_acc

    few, many = robust(20), robust(200)
    assert many <= few


def test_the_decaying_step_is_at_least_as_strong_on_the_same_points(cards, tmp_path):
    kw = dict(n=60, device="cpu", results=tmp_path, progress=False)
    plain = bench.evaluate(cards["cvae-adv"], learned_threat(cards["cvae"], eps="p75", steps=20), **kw)
    strong = bench.evaluate(cards["cvae-adv"], learned_threat(cards["cvae"], eps="p75", steps=40, restarts=3,
                                                             decay=0.01), **kw)
    assert strong.robust_acc <= plain.robust_acc + 0.02


def test_certificate_columns_line_up_seeds_whose_quartiles_differ():
    """Seeds with their own quartiles and grid lengths: grid radii only where every seed has them, and each
    quartile column at each seed's own quartile (a positional mean would mix radii)."""
    from bench.families.learned_sets.report import curve_columns

    a = {"curve": {"radii": [0.0, 0.5, 1.0, 1.2, 1.5, 1.7, 1.9], "markers": {"p25": 1.2, "p50": 1.7, "p75": 1.9}}}
    b = {"curve": {"radii": [0.0, 0.5, 1.0, 1.3, 1.5, 2.0, 2.1, 2.3],
                   "markers": {"p25": 1.3, "p50": 2.1, "p75": 2.3}}}
    columns = curve_columns([a, b])
    assert [label for label, _, _ in columns] == ["0.00", "0.50", "1.00", "p25 (1.25)", "1.50", "p50 (1.90)",
                                                 "p75 (2.10)"]
    assert dict((label, at) for label, _, at in columns)["p50 (1.90)"] == [5, 6]


def test_the_certificate_plot_is_an_svg(tmp_path):
    from bench.families.learned_sets.report import plot_certificates

    seeds = [_fake_seed(0.7, 0.05), _fake_seed(0.8, 0.06)]
    path = plot_certificates(tmp_path / "certificates.svg", seeds, "mnist-rts")
    assert path.read_text().lstrip().startswith("<?xml") and "<svg" in path.read_text()
    again = plot_certificates(tmp_path / "again.svg", seeds, "mnist-rts")
    assert again.read_bytes() == path.read_bytes()  # a re-rendered report changes no byte of its plot
    assert not list(tmp_path.glob(".*part"))


def test_the_chunk_of_noise_draws_is_part_of_the_protocol(cards):
    """torch draws noise differently in chunks of other sizes, so the chunk changes rows: another protocol."""
    assert not torch.equal(torch.randn(1000, generator=torch.Generator().manual_seed(0)),
                           torch.cat([torch.randn(n, generator=g) for g in [torch.Generator().manual_seed(0)]
                                      for n in (300, 700)]))
    for family, params in (("latent-smoothing", {"sigma": 0.5}), ("learned-cvae-random", {"eps": 1.0})):
        hashes = {bench.testing.threat_card(family, cvae=cards["cvae"], chunk=chunk, **params).hash
                  for chunk in (500, 1000)}
        assert len(hashes) == 2, family


def test_the_report_pictures_show_the_runs_own_adversarial_inputs(tmp_path):
    """The pictures read the ranked run's stored inputs back: each is the input that run scored, so re-classifying
    it gives the stored prediction; rendering twice writes the same bytes."""
    from bench.families.learned_sets.report import SETTINGS, _Runner, examples, plot_examples, render

    models = Path(__file__).parents[1] / "fingerprints" / "models"
    threat = tmp_path / "latent.yaml"
    threat.write_text(yaml.safe_dump({"id": "latent", "family": "learned-cvae-pgd", "params": {
        "cvae": str(models / "digits-cvae.yaml"), "eps": 1.5, "steps": 5}}))
    runner = _Runner(0, tmp_path / "work", "cpu")
    summary = runner.run(models / "digits-cnn.yaml", threat, 30, save_adv=True)
    shown = examples(runner, summary, k=6)
    assert len(shown["label"]) == 6
    with torch.no_grad():
        pred = bench.load_model(str(models / "digits-cnn.yaml"))(torch.tensor(shown["x_adv"])).argmax(1)
    assert pred.tolist() == shown["adv_pred"] and shown["x"] != shown["x_adv"]
    assert any(p != y for p, y in zip(shown["adv_pred"], shown["label"]))
    path = plot_examples(tmp_path / "examples.png", {"a row": shown, "another": shown}, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_examples(tmp_path / "again.png", {"a row": shown, "another": shown}, "title").read_bytes() == \
        path.read_bytes()
    text = render(SETTINGS["mnist-rts"], [_fake_seed(0.7, 0.05)], [0], SETTINGS_SEEN | {"examples": "ex.png"}, 60.0)
    assert "## Adversarial examples (seed 0)" in text and "(ex.png)" in text
