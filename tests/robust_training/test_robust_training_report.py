"""The robust-training report on made-up per-seed numbers: its claims pass, fail or stay unresolved from the
paired differences, it renders every section, its per-seed cards carry the budget, and the command refuses what
it cannot compare."""
from __future__ import annotations

import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.families.robust_training.report import Budget, attack_gap, claims, render, rows_of, seed_card

N = 400


def _points(acc: float, shift: int = 0) -> dict[int, bool]:
    """N points of which the first acc * N (moved by ``shift``) are right."""
    right = int(acc * N)
    return {k: (k - shift) % N < right for k in range(N)}


def _seed(armor_aa: float, base_aa: float = 0.6) -> dict:
    rows = rows_of(["kl"])
    accs = {row: {"clean": 0.95, "pgd": base_aa + 0.05, "autoattack": armor_aa if "ARMOR" in row else base_aa}
            for row in rows}
    points = {row: {m: _points(a) for m, a in acc.items()} for row, acc in accs.items()}
    history = [{"epoch": 1, "clean_acc": 0.9, "pgd_acc": 0.7, "dual_lambda": 2.0, "weight_entropy": 4.8,
                "weight_max_n": 1.5, "weight_kl": 0.02, "weight_zero": 0.0}]
    return {"acc": accs, "points": points, "eval_seconds": {row: 60.0 for row in rows},
            "training": {row: {"seconds": 200.0, "history": history if "ARMOR" in row else history[:0]}
                         for row in rows}}


def _verdicts(per_seed) -> dict[str, object]:
    return {claim.split(" (")[0]: holds for claim, holds, _ in claims(per_seed, rows_of(["kl"]))}


def test_the_paper_s_claim_is_judged_on_the_paired_difference():
    better = _verdicts([_seed(0.70), _seed(0.72), _seed(0.69)])
    assert better["ARMOR_KL(TRADES) has higher AutoAttack accuracy than TRADES"] is True
    worse = _verdicts([_seed(0.50), _seed(0.52), _seed(0.49)])
    assert worse["ARMOR_KL(TRADES) has higher AutoAttack accuracy than TRADES"] is False
    assert worse["ARMOR_KL(TRADES) is not worse than TRADES under AutoAttack by more than 1 point"] is False
    same = _verdicts([_seed(0.60), _seed(0.605), _seed(0.60)])
    assert same["ARMOR_KL(TRADES) has higher AutoAttack accuracy than TRADES"] == "unresolved"
    mixed = _verdicts([_seed(0.70), _seed(0.50), _seed(0.70)])
    assert mixed["ARMOR_KL(MART) has higher AutoAttack accuracy than MART"] == "mixed"
    assert same["AutoAttack is at least as strong as PGD-50×10 on every row"] is True
    # ARMOR_D rows robust at 70% under AutoAttack but 65% under PGD: AutoAttack missed points PGD broke
    assert better["AutoAttack is at least as strong as PGD-50×10 on every row"] is False


def test_the_attack_check_compares_on_the_same_points():
    points = {"pgd": {k: k < 300 for k in range(1000)}, "autoattack": {k: k < 40 for k in range(100)}}
    assert attack_gap(points) == 0.6  # PGD leaves all of AutoAttack's 100 points robust, AutoAttack 40


def test_the_report_renders_every_section():
    per_seed = [_seed(0.62), _seed(0.58)]
    text = render(per_seed, [0, 1], rows_of(["kl"]), {"command": "bench robust-training report", "device": "cpu",
                                                       "threads": 2, "budget": "10 epochs", "eps": 0.3,
                                                       "n_clean": N, "n_pgd": N, "n_aa": N}, 60.0)
    for heading in ("## What the runs show", "## Claims", "## Accuracy (%)", "### Per seed (%)",
                    "## ARMOR_D against its base, per seed", "## Training record", "## Conventions and deviations"):
        assert heading in text
    assert "| ARMOR_KL(TRADES) | `mnist-cnn-rt-armor-kl-trades` | 95.0 ± 0.0 | 65.0 ± 0.0 | 60.0 ± 2.8 |" in text
    assert "| ARMOR_KL(TRADES) − TRADES | AutoAttack | +2.0 points" in text
    assert "| PGD-AT | 90.0 ± 0.0 | 70.0 ± 0.0 | – |" not in text  # bases have no duals ...
    assert "| ARMOR_KL(PGD-AT) | 90.0 ± 0.0 | 70.0 ± 0.0 | 2.000 ± 0.000 | – |" in text  # ... ARMOR_D rows do


def test_per_seed_cards_carry_the_seed_and_the_budget(tmp_path):
    same = seed_card("mnist-cnn-rt-trades", 0, tmp_path, Budget())
    assert same.stem == "mnist-cnn-rt-trades"  # shares the built-in card's weights
    path = seed_card("mnist-cnn-rt-armor-kl-trades", 2, tmp_path, Budget(epochs=1, train_subset=256, eps=0.15))
    card = yaml.safe_load(path.read_text())
    params = card["recipe"]["params"]
    assert card["id"] == "mnist-cnn-rt-armor-kl-trades-seed2-e1-n256-eps0.15" and card["recipe"]["seed"] == 2
    assert (params["epochs"], params["train_subset"], params["eps"]) == (1, 256, 0.15)
    assert params["step_size"] == 0.0375 and params["validation"]["attack"]["eps"] == 0.15
    assert params["base"] == "trades" and params["radius"] == 0.02


def test_the_command_refuses_what_it_cannot_compare(tmp_path):
    def run(*args):
        result = CliRunner().invoke(app, ["robust-training", "report", "--out", str(tmp_path / "r.md"), "--work",
                                          str(tmp_path / "w"), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        return result.output

    assert "at least 3 seeds" in run("--seed", "0", "--seed", "1")
    assert "unknown divergence 'renyi'" in run("--divergence", "renyi")
    assert "AutoAttack's points must be among PGD's" in run("--n-aa", "500", "--n-pgd", "100")
    assert not (tmp_path / "w").exists()
