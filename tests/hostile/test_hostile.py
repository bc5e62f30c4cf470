"""Trust under hostile input: every case of the hostile catalogue ends in a clear error or an honest note,
never a silent number, a hang, a traceback or code run without consent."""
from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from catalogue import (FAMILY_CARDS, GRADIENT, HOSTILE_CARDS, HOSTILE_MODELS, PERTURBING, Detached, NaNOffTheGrid,
                       Noisy)
from typer.testing import CliRunner

import bench
from bench.cards import catalogue, locate
from bench.cli import app
from bench.errors import BenchError, CardError, DataError, WeightsError
from bench.models import load_model_card
from bench.store import Store, StoreError
from bench.summary import summarize
from bench.threats import THREAT_FAMILIES, ThreatCard, load_threat_card, make_threat

TINY_CVAE = {
    "id": "hostile-cvae", "dataset": "digits", "task": "perturbation-set",
    "architecture": {"name": "cvae-stn", "kwargs": {"channels": 1, "side": 8, "latent": 4, "width": 4}},
    "recipe": {"name": "cvae", "seed": 0, "params": {
        "epochs": 1, "batch_size": 64, "train_subset": 256, "val_size": 64, "stats_passes": 1,
        "pairs": {"kind": "rts", "rotation": 20}, "beta": {"knots": [0], "values": [1.0]}}},
}


@pytest.fixture(autouse=True)
def shared_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "hostile-cache"))


@pytest.fixture(scope="module")
def refs(tmp_path_factory, digits_card) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hostile-cvae")
    path = folder / "hostile-cvae.yaml"
    path.write_text(yaml.safe_dump(TINY_CVAE))
    out = {"<cvae>": str(path), "<source>": str(digits_card)}
    for family in ("pgd", "learned-cvae"):
        member = folder / f"member-{family}.yaml"
        member.write_text(yaml.safe_dump({"id": f"member-{family}", "family": family,
                                          "params": _filled(FAMILY_CARDS[family], out)}))
        out[f"<{family}-card>"] = str(member)
    return out


def _filled(params, refs: dict[str, str]):
    if isinstance(params, dict):
        return {k: _filled(v, refs) for k, v in params.items()}
    if isinstance(params, list):
        return [_filled(v, refs) for v in params]
    return refs.get(params, params) if isinstance(params, str) else params


def family_card(family: str, refs: dict[str, str]) -> ThreatCard:
    return ThreatCard(id=f"hostile-{family}", family=family, params=_filled(FAMILY_CARDS[family], refs))


def test_every_threat_family_is_in_the_hostile_catalogue():
    assert set(FAMILY_CARDS) == set(THREAT_FAMILIES.names()), "add a cheap card for the new family to FAMILY_CARDS"


CLASSIFIER_FAMILIES = sorted(f for f in FAMILY_CARDS if "classifier" in THREAT_FAMILIES.get(f).tasks)


@pytest.mark.parametrize("family", CLASSIFIER_FAMILIES)
@pytest.mark.parametrize("model", sorted(HOSTILE_MODELS))
def test_every_family_refuses_broken_models(digits_model, refs, tmp_path, family, model):
    factory, message = HOSTILE_MODELS[model]
    with pytest.raises(BenchError, match=message):
        bench.evaluate(factory(digits_model), family_card(family, refs), dataset="digits", n=20,
                       results=tmp_path, progress=False)


@pytest.mark.parametrize("family", CLASSIFIER_FAMILIES)
def test_every_family_refuses_what_is_finite_clean_but_nan_perturbed(digits_model, refs, tmp_path, family):
    run = functools.partial(bench.evaluate, NaNOffTheGrid(digits_model), family_card(family, refs),
                            dataset="digits", n=20, results=tmp_path, progress=False)
    if family in PERTURBING:
        with pytest.raises(BenchError, match="non-finite"):
            run()
    else:
        assert run().n == 20


@pytest.mark.parametrize("family", CLASSIFIER_FAMILIES)
def test_gradient_families_say_when_gradients_vanish_or_outputs_are_random(digits_model, refs, tmp_path,
                                                                            family):
    kw = dict(dataset="digits", n=20, results=tmp_path, progress=False)
    noisy = bench.evaluate(Noisy(digits_model), family_card(family, refs), **kw)
    assert any("differ between two identical calls" in note for note in noisy.notes)  # every family
    if family == "autoattack":
        with pytest.raises(BenchError, match="outputs carry no gradient"):
            bench.evaluate(Detached(digits_model), family_card(family, refs), **kw)
        return
    detached = bench.evaluate(Detached(digits_model), family_card(family, refs), **kw)
    if family in GRADIENT:
        assert any("input gradient is exactly zero for 20 of 20 points" in note for note in detached.notes)


@pytest.mark.parametrize("family", CLASSIFIER_FAMILIES)
def test_every_family_s_stored_rows_are_checked_at_rest(digits_model, refs, tmp_path, family):
    """One flipped bit in any family's shard is caught, set aside and recomputed to the same numbers."""
    kw = dict(dataset="digits", n=20, results=tmp_path, progress=False)
    first = bench.evaluate(digits_model, family_card(family, refs), **kw)
    shard = sorted((tmp_path / "runs" / first.run_id).glob("shard-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 4
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        summarize(Store(tmp_path), first.run_id)
    again = bench.evaluate(digits_model, family_card(family, refs), **kw)
    assert again.run_id == first.run_id and str(again.metrics) == str(first.metrics)


def test_set_quality_refuses_a_set_that_generates_nan(refs, tmp_path):
    cvae = bench.load_model(refs["<cvae>"])

    class NaNGenerator(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, z):
            return self.inner(x, z) * float("nan")

    cvae.generator = NaNGenerator(cvae.generator)
    card = ThreatCard(id="quality", family="set-quality", params={"eps": 1.0, "pairs": {"kind": "rts"}})
    with pytest.raises(BenchError, match="non-finite values in column"):
        bench.evaluate(cvae, card, dataset="digits", task="perturbation-set", n=20, results=tmp_path,
                       progress=False)


# --- hostile cards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_CARDS))
def test_hostile_card_files_are_refused_quickly(tmp_path, name):
    text, message = HOSTILE_CARDS[name]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    with pytest.raises(CardError, match=message):
        make_threat(path)
    assert time.perf_counter() - start < 5


def test_an_include_of_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "card.yaml").write_text("id: c\nfamily: clean\ninclude: pipe.yaml\n")
    with pytest.raises(CardError, match="not a regular file"):
        load_threat_card(tmp_path / "card.yaml")


def test_a_bad_user_card_affects_only_itself(tmp_path, monkeypatch):
    root = tmp_path / "cards"
    (root / "models").mkdir(parents=True)
    (root / "models" / "broken.yaml").write_text(HOSTILE_CARDS["alias-bomb.yaml"][0])
    (root / "models" / "typo.yaml").write_text("id: typo\ndatset: mnist\n")
    monkeypatch.setenv("BENCH_CARDS", str(root))
    assert load_model_card("mnist-cnn-pgd-at").id == "mnist-cnn-pgd-at"  # built-ins still load
    found = catalogue("model")
    assert root / "models" / "broken.yaml" in found.invalid and "typo" in found.cards
    with pytest.raises(CardError, match="aliases"):
        locate("model", "broken")
    listing = CliRunner().invoke(app, ["models"]).output
    assert "invalid: " in listing and "mnist-cnn-pgd-at" in listing


def test_an_entry_point_runs_nothing_without_consent(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    root = tmp_path / "cards"
    (root / "models").mkdir(parents=True)
    (root / "models" / "impostor.yaml").write_text(yaml.safe_dump({
        "id": "mnist-cnn-standard", "dataset": "mnist",  # named like a built-in
        "weights": {"entry_point": "os:system"},
        "architecture": {"name": "x", "kwargs": {"command": f"touch {marker}"}}}))
    monkeypatch.setenv("BENCH_CARDS", str(root))
    monkeypatch.delenv("BENCH_TRUST_CODE", raising=False)
    with pytest.warns(UserWarning, match="overrides the model card 'mnist-cnn-standard'"):
        result = CliRunner().invoke(app, ["run", "--model", "mnist-cnn-standard", "--threat", "clean", "--n", "5",
                                          "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "builds its model by running code" in result.output
    assert "--trust-code os" in result.output and not marker.exists()
    assert "entry_point os:system (runs code)" in CliRunner().invoke(app, ["models"]).stdout
    listing = {r["id"]: r for r in json.loads(CliRunner().invoke(app, ["models", "--format", "json"]).stdout)}
    assert listing["mnist-cnn-standard"]["weights"] == "entry_point"
    assert listing["mnist-cnn-standard"]["entry_point"] == "os:system"


# --- hostile files and arguments ---------------------------------------------------------------------


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*0.png"):
        bench.data.load_dataset(f"folder:{tmp_path}")


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=2**40), "--seed must be between 0 and"),
    (dict(seed=-1), "--seed must be between 0 and"),
    (dict(device="mps"), "MPS is not available"),
])
def test_bad_arguments_are_clear_errors(digits_model, tmp_path, kwargs, message):
    if kwargs.get("device") == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(BenchError, match=message):
        bench.evaluate(digits_model, "clean", dataset="digits", n=5, results=tmp_path, progress=False, **kwargs)


class _Trickle(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_a_trickling_download_hits_its_deadline_and_leaves_nothing(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from bench.models.weights import download

        start = time.perf_counter()
        with pytest.raises(WeightsError, match="did not finish within 2 s"):
            download(f"http://127.0.0.1:{server.server_address[1]}/w.pt", "a" * 64)
        assert time.perf_counter() - start < 10
        assert list(Path(tmp_path / "cache" / "weights").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()
