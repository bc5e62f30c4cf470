"""The OOD-to-ID report's claim checks on made-up per-seed numbers: each claim passes, fails or is called
untestable from its statistic, and the report renders every section."""
from __future__ import annotations

import copy
from pathlib import Path

from bench.families.ood_to_id.report import claims, render


def _seed(clean=0.98, dark=(0.97, 0.5), sharp=(0.98,), defended_dark=(0.97, 0.9), contrast=0.5,
          defended_contrast=0.8, worst=0.01, reference=0.878) -> dict:
    def cells(darker, contrast_acc):
        return {"correct_darker_1": darker[0], "correct_darker_2": darker[1], "correct_sharper_1": sharp[0],
                "correct_contrast_1": contrast_acc}

    attacks = {"standard": {"pgd": 0.0, "autoattack": 0.0},
               "defended": {"pgd": 0.4, "autoattack": worst, "transfer": 0.8},
               "gated": {"pgd": 0.4, "autoattack": worst, "bpda": worst, "bpda-apgd": worst, "transfer": 0.8}}
    return {"clean": {"standard": clean, "defended": clean - 0.002, "gated": clean},
            "shifts": {"standard": cells(dark, contrast), "defended": cells(defended_dark, defended_contrast),
                       "gated": cells(defended_dark, defended_contrast)},
            "attacks": attacks, "worst": {"standard": 0.0, "defended": worst, "gated": worst},
            "gate": {"clean": 0.05, "darker 0.4": 0.9}, "models": {}, "reference": reference,
            "warnings": {"defended": ["Square decreased robust accuracy"], "mnist-cnn-pgd-at": []}}


def _verdicts(per_seed) -> dict[str, object]:
    return {claim: holds for claim, holds, _ in claims(per_seed)}


def test_claims_pass_fail_and_untestable_follow_their_statistic():
    verdicts = _verdicts([_seed(), _seed()])
    benign = "defended: benign accuracy is kept (the paper says exactly; tested with a tolerance of 1 point against " \
        "the standard CNN)"
    assert verdicts[benign] is True
    recover = "defended: recovers most (at least 50%) of the accuracy lost to darker/sharper (trained-on) inputs"
    assert verdicts[recover] is True  # (0.4 of 0.47 lost) won back
    assert verdicts["sharper inputs cost the standard CNN accuracy for the defence to recover"] is None
    adaptive = [c for c in verdicts if c.startswith("defended: under adaptive attack")]
    assert verdicts[adaptive[0]] is True

    masked = [_seed(worst=0.4), _seed(worst=0.4)]  # the adaptive attacks leave 40%: not near the bare CNN's 0%
    assert _verdicts(masked)[adaptive[0]] is False
    hurt = [_seed(defended_dark=(0.95, 0.55)), _seed(defended_dark=(0.95, 0.55))]
    assert _verdicts(hurt)[recover] is False
    assert _verdicts([_seed(), _seed(defended_dark=(0.95, 0.55))])[recover] == "mixed"  # the seeds disagree
    safety = ("defended: translating never costs more than 5 points on any shift cell (a safety check, not a "
              "paper claim)")
    assert verdicts[safety] is True and _verdicts(hurt)[safety] is True
    assert _verdicts([_seed(defended_contrast=0.3), _seed()])[safety] == "mixed"
    check = "defended: AutoAttack is at least as strong as PGD (a check of the attacks, not a paper claim)"
    assert verdicts[check] is True
    weak = [_seed(), _seed()]
    for s in weak:
        s["attacks"]["defended"]["autoattack"] = 0.6
    assert _verdicts(weak)[check] is False
    lossy = copy.deepcopy([_seed(), _seed()])
    for s in lossy:
        s["clean"]["defended"] = s["clean"]["standard"] - 0.03
    assert _verdicts(lossy)[benign] is False


def test_the_papers_robustness_claims_are_decided_against_the_bare_cnn_and_the_reference_defence():
    improves = "defended: improves robustness to adversarial inputs (paper claim), by at least 5 points over " \
        "the standard CNN, both attacked adaptively"
    sota = "defended: outperforms state-of-the-art defences (paper claim), held against mnist-cnn-pgd-at (PGD " \
        "adversarial training) under AutoAttack"
    verdicts = _verdicts([_seed(), _seed()])  # 1% robust against the bare CNN's 0% and the reference's 87.8%
    assert verdicts[improves] is False and verdicts[sota] is False
    strong = _verdicts([_seed(worst=0.9), _seed(worst=0.9)])
    assert strong[improves] is True and strong[sota] is True
    assert _verdicts([_seed(worst=0.9), _seed(worst=0.9, reference=0.95)])[sota] == "mixed"


def test_the_report_states_every_verdict_and_section():
    mnist_c = {"mnist-cnn-standard": {"clean": 0.98, "mean": 0.8, "cells": {"correct_fog_5": 0.3},
                                      "mce": (1.0, 1.0, 1.0)}}
    settings = {"command": "bench ood2id report", "n_eval": 10, "n_attack": 10, "n_mnist_c": 10, "device": "cpu",
                "threads": 2}
    text = render([_seed(), _seed(worst=0.4)], [0, 1], mnist_c, settings, 60.0)
    for part in ("## Claims", "**NOT TESTABLE**", "**PASS**", "**MIXED (the seeds disagree)**", "## Natural shifts",
                 "worst adaptive", "## MNIST-C",
                 "| mnist-cnn-standard | 98.0 | 80.0 | 1.000 [1.000, 1.000] | – | 30 |", "seed 1:",
                 "| mnist-cnn-pgd-at (reference) | – | 87.8 ± 0.0 |", "- mnist-cnn-pgd-at: none",
                 "- defended: seed 0: Square decreased robust accuracy / seed 1: Square decreased robust accuracy",
                 "**FAIL**: defended: outperforms state-of-the-art defences"):
        assert part in text, part


def test_seed_cards_name_their_parts_by_absolute_path_from_a_relative_work_folder(tmp_path, monkeypatch):
    """A relative --work (the CLI's default) once made compose parts resolve from the card's own folder twice."""
    import yaml

    from bench.families.ood_to_id.report import ROWS, TRANSLATOR
    from bench.models.card import load_model_card
    from bench.reports import SeedRunner

    monkeypatch.chdir(tmp_path)
    runner = SeedRunner(0, Path("work"), "cpu")
    classifier = runner.card("model", ROWS["standard"])
    translator = runner.card("model", TRANSLATOR, classifier=classifier)
    defended = runner.card("model", ROWS["defended"], classifier=classifier, translator=translator)
    parts = yaml.safe_load(defended.read_text())["compose"]["parts"]
    assert Path(parts["classifier"]).is_absolute() and Path(parts["classifier"]).is_file()
    load_model_card(defended)  # its parts are found
