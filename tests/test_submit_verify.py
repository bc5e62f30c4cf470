"""Submitting to the leaderboard and verifying its entries (issue 19 items 4 and 5), on the fingerprint suite's tiny
digits CNN (committed weights) with a PGD protocol: 24 points in 2 shards of 12."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError, CardError, NotApplicable, WeightsError
from bench.leaderboard.entries import MetricPart, Points, read_entry, save_entry
from bench.leaderboard.submit import check_card, claimed_entry, submit, submit_claim
from bench.leaderboard.verify import changed_entries, verify_entry
from bench.run import evaluate

FINGERPRINTS = Path(__file__).parent / "fingerprints"
N, BATCH = 24, 12


def _card(folder: Path, **changes: str) -> Path:
    """The digits CNN's card and weights copied into ``folder``, with ``changes`` as YAML lines replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FINGERPRINTS / "models" / "digits-cnn.safetensors", folder)
    text = (FINGERPRINTS / "models" / "digits-cnn.yaml").read_text() + "license: MIT\n"
    for old, new in changes.items():
        text = text.replace(old, new)
    (folder / "digits-cnn.yaml").write_text(text)
    return folder / "digits-cnn.yaml"


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> dict:
    """A leaderboard folder with a protocols file (clean and PGD on digits), a submitted card and its entries."""
    root = tmp_path_factory.mktemp("board")
    lb = root / "leaderboard"
    lb.mkdir()
    for name in ("clean", "pgd"):
        shutil.copy(FINGERPRINTS / "cards" / f"{name}.yaml", lb)
    (lb / "protocols.yaml").write_text("version: 1\ndatasets:\n  digits:\n    classifier: [clean.yaml, pgd.yaml]\n")
    card = _card(root / "submitted")
    written, skipped = submit(card, out=lb, n=N, batch_size=BATCH, results=root / "results", progress=False)
    assert not skipped
    return {"root": root, "lb": lb, "card": card, "entries": written}


def _pgd_entry(board: dict) -> Path:
    return next(p for p in board["entries"] if read_entry(p).protocol.family == "pgd")


def test_submit_runs_every_protocol_and_writes_verified_entries(board):
    entries = [read_entry(p) for p in board["entries"]]
    assert sorted(e.protocol.id for e in entries) == ["fingerprint-clean", "fingerprint-pgd"]
    assert {e.provenance for e in entries} == {"verified"} and {e.n for e in entries} == {N}
    for path in board["entries"]:
        check = verify_entry(path, board["lb"], fraction=1.0, results=board["root"] / "results")
        assert check.accepted, str(check)
        assert check.shards == [0, 1] and check.points == N and check.allowed == 0


def test_rerunning_a_submission_resumes_instead_of_recomputing(board, capsys):
    again, _ = submit(board["card"], out=board["lb"], n=N, batch_size=BATCH, results=board["root"] / "results",
                      progress=False)
    assert again == board["entries"]
    assert "[2/2] fingerprint-digits-cnn x pgd.yaml" in capsys.readouterr().err


def _claim_run(board: dict, name: str) -> Path:
    """The PGD run of the submitted card made 'elsewhere' (another results folder): a claim's run folder."""
    results = board["root"] / name
    summary = evaluate(board["card"], board["lb"] / "pgd.yaml", n=N, batch_size=BATCH, results=results,
                       progress=False)
    return results / "runs" / summary.run_id


def test_a_true_claim_is_accepted_as_self_reported(board):
    out = board["root"] / "claims"
    check, path = submit_claim(board["card"], _claim_run(board, "elsewhere"), out=out, fraction=0.5, seed=3,
                               results=board["root"] / "results")
    assert check.accepted and len(check.shards) == 1 and check.points == BATCH
    assert read_entry(path).provenance == "self-reported"


def _tampered(entry, flip: list[int]):
    """The entry with the headline's per-point outcome flipped at positions ``flip`` and its metrics restated from
    the tampered points (so it agrees with itself: only recomputing the points can tell)."""
    rows = entry.points.frame()
    column = entry.metrics[entry.headline].column
    rows.loc[rows.index[flip], column] = ~rows[column].iloc[flip].astype(bool)
    metrics = {}
    for name, part in entry.metrics.items():
        got = part.metric(name).compute(rows[part.column].to_numpy())
        metrics[name] = MetricPart(**{**part.model_dump(), "value": got.value, "low": got.low, "high": got.high})
    points = Points.of(rows, list(entry.points.columns))
    return entry.model_copy(update={"points": points, "metrics": metrics}), rows["index"].iloc[flip].tolist()


def test_a_tampered_claim_is_refused_naming_the_points(board, tmp_path):
    entry, flipped = _tampered(claimed_entry(_claim_run(board, "elsewhere")), [0, 13])
    claim = save_entry(entry, tmp_path / "claim")
    check, path = submit_claim(board["card"], claim, out=tmp_path / "out", fraction=1.0,
                               results=board["root"] / "results")
    assert path is None and not check.accepted
    assert check.disagreeing_points == sorted(flipped)
    assert all(f"point {i}:" in str(check) for i in flipped)
    assert not (tmp_path / "out").exists()


def test_a_claim_whose_numbers_are_not_its_points_is_refused(board, tmp_path):
    entry = claimed_entry(_claim_run(board, "elsewhere"))
    head = entry.metrics[entry.headline]
    forged = entry.model_copy(update={"metrics": {**entry.metrics, entry.headline: head.model_copy(
        update={"value": head.value + 0.25})}})
    check, path = submit_claim(board["card"], save_entry(forged, tmp_path), out=tmp_path / "out",
                               results=board["root"] / "results")
    assert path is None and not check.shards  # refused before recomputing anything
    assert any(f"metric {entry.headline}: value" in p and "its points give" in p for p in check.problems)


def test_a_claim_of_another_model_is_refused(board, tmp_path):
    other = _card(tmp_path / "other", **{"input_size: 8": "input_size: 8\n    num_classes: 10"})
    check, path = submit_claim(other, _claim_run(board, "elsewhere"), out=tmp_path / "out",
                               results=board["root"] / "results")
    assert path is None and any("the card hashes to" in p for p in check.problems)


def test_a_card_with_a_wrong_sha256_is_refused(tmp_path):
    card = _card(tmp_path, **{"sha256: 4": "sha256: 5"})
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        check_card(card)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_a_pickle_payload_is_refused_without_running_it(tmp_path):
    _Payload.marker = str(tmp_path / "ran")
    for name, data in (("model.safetensors", pickle.dumps(_Payload())), ("model.pt", b"PK\x03\x04" + b"\0" * 64)):
        (tmp_path / name).write_bytes(data)
        card = _card(tmp_path / name.split(".")[1], **{
            "file: digits-cnn.safetensors": f"file: ../{name}",
            "sha256: 485284607a86ee86a0aa64a8d6c03eb29ab69fd675c94e37f22ab0db5ce1f0ca":
                f"sha256: {hashlib.sha256(data).hexdigest()}"})
        with pytest.raises(WeightsError, match="is a pickle.*safetensors only"):
            check_card(card)
    assert not (tmp_path / "ran").exists()


def test_an_entry_point_card_needs_consent(tmp_path):
    card = tmp_path / "code.yaml"
    card.write_text("id: code-model\ndataset: digits\nlicense: MIT\nweights:\n  entry_point: torch.nn:Identity\n")
    with pytest.raises(WeightsError, match="no consent was given to run package torch; nothing was run"):
        check_card(card)
    assert check_card(card, trust_code=("torch",)).id == "code-model"


def test_a_card_without_a_licence_is_refused(tmp_path):
    with pytest.raises(BenchError, match="names no licence"):
        check_card(_card(tmp_path, **{"license: MIT\n": ""}))
    with pytest.raises(CardError):
        check_card(_card(tmp_path / "bad", **{"task: classifier": "task: oracle"}))


def test_verify_refuses_a_stale_entry_before_training_or_recomputing(board, tmp_path):
    entry = read_entry(_pgd_entry(board))
    implementation = json.loads(json.dumps(entry.implementation))
    implementation["family"]["revision"] = implementation["family"]["revision"] + 100
    lb = tmp_path / "lb"
    shutil.copytree(board["lb"], lb)
    path = save_entry(entry.model_copy(update={"implementation": implementation}), lb)
    check = verify_entry(path, lb, results=board["root"] / "results")
    assert not check.accepted and not check.shards
    assert any(p.startswith("stale: made by other code (family.revision") for p in check.problems)


def test_verify_refuses_schema_errors_misplaced_and_tampered_entries(board, tmp_path):
    lb = tmp_path / "lb"
    shutil.copytree(board["lb"], lb)
    bad = lb / "entries" / "digits" / "bad.json"
    bad.write_text('{"schema_version": 1, "model": 3}')
    assert "not a valid entry of schema version 1" in verify_entry(bad, lb).problems[0]
    moved = lb / "entries" / "digits" / "moved.json"
    shutil.copy(_pgd_entry(board), moved)
    assert verify_entry(moved, lb).problems[0].startswith("misplaced")
    tampered, flipped = _tampered(read_entry(_pgd_entry(board)), [5])
    check = verify_entry(save_entry(tampered, lb), lb, fraction=1.0, results=board["root"] / "results")
    assert not check.accepted and check.disagreeing_points == flipped


def test_verify_lists_the_entries_a_pull_request_changed(board, tmp_path):
    lb = tmp_path / "lb"
    shutil.copytree(board["lb"], lb)
    git = ["git", "-C", str(lb), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    assert changed_entries(lb, "HEAD") == []
    tampered, _ = _tampered(read_entry(_pgd_entry(board)), [1])
    changed = save_entry(tampered, lb)
    assert changed_entries(lb, "HEAD") == [changed]
    with pytest.raises(BenchError, match="git cannot list"):
        changed_entries(lb, "no-such-revision")


def test_the_cli_gates_on_verify_and_refuses_a_tampered_claim(board, tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["leaderboard", "verify", str(_pgd_entry(board)), "--leaderboard", str(board["lb"]),
                               "--results", str(board["root"] / "results")])
    assert good.exit_code == 0, good.output
    assert "ACCEPTED" in good.output
    tampered, flipped = _tampered(claimed_entry(_claim_run(board, "elsewhere")), [2])
    claim = save_entry(tampered, tmp_path)
    refused = runner.invoke(app, ["submit", str(board["card"]), "--claimed", str(claim), "--spot", "1", "--out",
                                  str(tmp_path / "out"), "--results", str(board["root"] / "results")])
    assert refused.exit_code == 1, refused.output
    assert f"point {flipped[0]}:" in refused.output and "REFUSED" in refused.output
    assert np.all([not p.exists() for p in (tmp_path / "out").glob("**/*.json")])


def test_under_other_numerics_a_stated_binomial_share_of_points_may_flip(board, tmp_path):
    """An entry computed with another torch: recomputed here, up to the binomial bound of points may disagree
    (3 of 24 at a 1% flip rate and 99.9% confidence), and more is refused."""
    lb = tmp_path / "lb"
    shutil.copytree(board["lb"], lb)
    entry = read_entry(_pgd_entry(board))
    other = entry.model_copy(update={"numerics": {**entry.numerics, "torch": "0.0.0"}})
    for flips, accepted in (([3, 9, 20], True), ([0, 4, 8, 15], False)):
        tampered, _ = _tampered(other, flips)
        check = verify_entry(save_entry(tampered, lb), lb, fraction=1.0, results=board["root"] / "results")
        assert check.allowed == 3 and "torch: 0.0.0 entry" in check.tolerance
        assert check.accepted is accepted and len(check.disagreeing_points) == len(flips), str(check)


def test_an_imported_entry_is_checked_for_schema_and_place_only(tmp_path):
    from bench.leaderboard.robustbench import import_file

    record = tmp_path / "Carmon2019Unlabeled.json"
    record.write_text(json.dumps({"name": "Unlabeled Data", "dataset": "cifar10", "eps": "8/255", "clean_acc": "89.69",
                                  "autoattack_acc": "59.53", "reported": "62.5"}))
    path = save_entry(import_file(record, "cifar10", "Linf"), tmp_path)
    check = verify_entry(path, tmp_path)
    assert check.accepted and not check.shards and "imported: no points to recompute" in check.notes[0]


def test_the_readme_path_from_a_model_to_a_site_page_and_a_ci_gate(board, tmp_path):
    """What the README walks a newcomer through, command by command: submit, verify, render the site, gate CI on
    the verified entry."""
    runner, lb, results = CliRunner(), tmp_path / "leaderboard", str(board["root"] / "results")
    lb.mkdir()
    for name in ("protocols.yaml", "clean.yaml", "pgd.yaml"):
        shutil.copy(board["lb"] / name, lb)
    steps = [["submit", str(board["card"]), "--out", str(lb), "--n", str(N), "--batch-size", str(BATCH),
              "--results", results],
             ["leaderboard", "verify", "--leaderboard", str(lb), "--results", results],
             ["leaderboard", "site", "--out", str(tmp_path / "site"), "--entries", str(lb)]]
    for step in steps:
        done = runner.invoke(app, step)
        assert done.exit_code == 0, (step, done.output)
    assert "pages written" in done.output
    (pgd,) = [p for p in lb.glob("entries/digits/*.json") if read_entry(p).protocol.family == "pgd"]
    page = (tmp_path / "site" / "index.html").read_text()
    assert "fingerprint-digits-cnn" in page
    gate = runner.invoke(app, ["check", "--model", str(board["card"]), "--baseline", str(pgd), "--results", results])
    assert gate.exit_code == 0 and "PASSED" in gate.output, gate.output


def test_a_protocol_that_cannot_evaluate_the_model_kind_is_skipped_with_its_reason(tmp_path, capsys):
    """A VAE submitted where the protocols ask for the Lipschitz certificate too: that protocol cannot evaluate
    a conv-vae, which is said before anything runs (and by `bench run`), and the others are still run."""
    lb = tmp_path / "lb"
    lb.mkdir()
    for name in ("clean", "vae-lipschitz-margin"):
        shutil.copy(FINGERPRINTS / "cards" / f"{name}.yaml", lb)
    (lb / "protocols.yaml").write_text("version: 1\ndatasets:\n  digits:\n    generative: [clean.yaml, "
                                       "vae-lipschitz-margin.yaml]\n")
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(FINGERPRINTS / "models" / "digits-vae.safetensors", folder)
    card = folder / "digits-vae.yaml"
    card.write_text((FINGERPRINTS / "models" / "digits-vae.yaml").read_text() + "license: MIT\n")
    written, skipped = submit(card, out=lb, n=N, batch_size=BATCH, results=tmp_path / "results", progress=False)
    assert [read_entry(p).protocol.family for p in written] == ["clean"]
    assert list(skipped) == ["vae-lipschitz-margin.yaml"]
    assert "has no lipschitz_constants()" in skipped["vae-lipschitz-margin.yaml"]
    assert "not applicable: " in capsys.readouterr().err
    with pytest.raises(NotApplicable, match="cannot evaluate fingerprint-digits-vae: it has no lipschitz"):
        evaluate(card, lb / "vae-lipschitz-margin.yaml", n=N, results=tmp_path / "results", progress=False)
