"""Tasks and families as a user meets them: family names as threats, task checks before anything is built,
a generative model through `bench run`, the store and the board, and tensors the caller holds."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.errors import BenchError, CardError
from bench.metrics import Metric
from bench.models.archs import ARCHITECTURES
from bench.models.weights import sha256_file
from bench.ops.norms import normalized, project_l2
from bench.params import Params
from bench.tasks.generative import per_pixel_mse, reconstruct
from bench.threats import THREAT_FAMILIES, Batch, Outcome, Target, Threat
from conftest import threat


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- family names as threats -------------------------------------------------------------------------


@pytest.fixture
def digits_defaults(tmp_path, monkeypatch):
    """A user card folder with a default pgd card for digits."""
    root = tmp_path / "user-cards"
    write(root / "attacks" / "pgd-digits.yaml", {"id": "pgd-digits", "family": "pgd", "default": True,
                                                 "datasets": ["digits"],
                                                 "params": {"norm": "Linf", "eps": 0.1, "steps": 5}})
    monkeypatch.setenv("BENCH_CARDS", str(root))
    return root


def test_a_family_name_runs_its_default_card_and_says_which(digits_card, digits_defaults, tmp_path):
    r = invoke("run", "--model", digits_card, "--threat", "pgd", "--n", 40, "--results", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert "note: threat pgd: the family's default card for digits is pgd-digits" in r.output
    assert "threat pgd-digits (pgd" in r.output


def test_a_family_without_a_default_for_the_dataset_lists_its_cards(digits_card, tmp_path):
    r = invoke("run", "--model", digits_card, "--threat", "autoattack", "--n", 10, "--results", tmp_path)
    assert r.exit_code == 2 and "has no default card for dataset digits" in r.output and "Traceback" not in r.output


def test_two_defaults_for_one_dataset_are_refused(digits_card, digits_defaults, tmp_path):
    write(digits_defaults / "attacks" / "pgd-digits-2.yaml", {"id": "pgd-digits-2", "family": "pgd",
                                                              "default": True, "datasets": ["digits"],
                                                              "params": {"norm": "L2", "eps": 1, "steps": 5}})
    r = invoke("run", "--model", digits_card, "--threat", "pgd", "--n", 10, "--results", tmp_path)
    assert r.exit_code == 2 and "2 default cards for digits" in r.output


def test_an_unknown_threat_suggests_cards_and_families(digits_card, tmp_path):
    r = invoke("run", "--model", digits_card, "--threat", "learned-cvea", "--n", 10, "--results", tmp_path)
    assert r.exit_code == 2 and "unknown threat 'learned-cvea'" in r.output
    assert "did you mean 'learned-cvae'" in r.output


def test_every_builtin_family_has_at_most_one_default_per_dataset():
    from bench.threats import threat_cards

    seen: dict[tuple[str, str], str] = {}
    for card in threat_cards():
        for dataset in card.datasets or ["any"]:
            if card.default:
                assert (card.family, dataset) not in seen, (card.id, seen.get((card.family, dataset)))
                seen[(card.family, dataset)] = card.id
    assert seen[("learned-cvae", "mnist42")] == "learned-cvae-rts-p50" and seen[("pgd", "mnist")] == "pgd-linf-0.3"


# --- task checks -----------------------------------------------------------------------------------------


def test_a_cvae_card_under_a_classifier_threat_is_refused_before_training(monkeypatch, tmp_path):
    import bench.training

    monkeypatch.setattr(bench.training, "train", lambda *a, **k: pytest.fail("nothing may be trained"))
    r = invoke("run", "--model", "mnist-rts-cvae", "--threat", "clean", "--results", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "evaluates classifier or generative models, but mnist-rts-cvae is a perturbation-set model" in r.output
    r = invoke("run", "--model", "mnist-rts-cvae", "--threat", "learned-cvae", "--results", tmp_path)
    assert r.exit_code == 2 and "learned-cvae evaluates classifier models, not perturbation-set models" in r.output


def test_an_unknown_task_is_a_card_error(tmp_path):
    card = write(tmp_path / "vae.yaml", {"id": "vae", "dataset": "digits", "task": "vae",
                                         "architecture": {"name": "small-cnn"}, "recipe": {"name": "standard",
                                                                                           "params": {"epochs": 1}}})
    with pytest.raises(CardError, match="unknown task 'vae'; known tasks: classifier, generative, perturbation-set"):
        bench.models.load_model_card(card)


# --- a generative family, test-only, through the whole path --------------------------------------------


class ToyVAE(nn.Module):
    """A linear VAE on 8x8 digits with a Bernoulli decoder; ``gain`` scales how strongly the encoder
    reacts to its input, so a larger gain means a less robust model."""

    def __init__(self, latent: int = 6, gain: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(64, 2 * latent), nn.Linear(latent, 64)
        with torch.no_grad():
            self.enc.weight.mul_(gain)

    def encode(self, x):
        mu, logvar = self.enc(x.flatten(1)).chunk(2, 1)
        return mu, logvar.clamp(-5, 5)

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).view(-1, 1, 8, 8)

    def reconstruct(self, x):
        return self.decode(self.encode(x)[0])

    def elbo(self, x):
        mu, logvar = self.encode(x)
        bce = nn.functional.binary_cross_entropy(self.decode(mu), x, reduction="none").flatten(1).sum(1)
        return -bce - 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)


class DamageParams(Params):
    eps: float
    steps: int = 10


class ReconstructionDamage(Threat):
    """Maximum-damage attack: push the reconstruction away from the clean one inside an L2 ball."""

    tasks = ("generative",)
    Params = DamageParams
    metrics = (Metric("damage", "damage", "reconstruction damage (per-pixel MSE)", higher_is_better=False),)
    headline = "damage"

    def attack(self, target: Target, batch: Batch) -> Outcome:
        model, x, p = target.module, batch.x, self.params
        with torch.no_grad():
            clean = reconstruct(model, x)
        delta = project_l2(torch.randn(x.shape, generator=batch.generator()), p.eps * 0.1)
        for _ in range(p.steps):
            delta.requires_grad_(True)
            loss = per_pixel_mse(model.reconstruct((x + delta).clamp(0, 1)), clean).sum()
            grad, = torch.autograd.grad(loss, delta)
            delta = project_l2(delta.detach() + p.eps / 4 * normalized(grad), p.eps)
        with torch.no_grad():
            return Outcome(values={"damage": per_pixel_mse(reconstruct(model, (x + delta).clamp(0, 1)), clean)})


@pytest.fixture
def toy_generative(monkeypatch, tmp_path):
    """The toy family and architecture, registered for one test; two toy VAE cards of different gain."""
    ARCHITECTURES.names(), THREAT_FAMILIES.names()  # load the registries before adding to them
    monkeypatch.setitem(ARCHITECTURES._entries, "toy-vae", ToyVAE)
    monkeypatch.setitem(THREAT_FAMILIES._entries, "reconstruction-damage", ReconstructionDamage)
    cards = {}
    for name, gain in (("steady-vae", 0.2), ("jumpy-vae", 5.0)):
        weights = tmp_path / f"{name}.safetensors"
        save_file(ToyVAE(gain=gain).state_dict(), str(weights))
        cards[name] = write(tmp_path / f"{name}.yaml", {
            "id": name, "dataset": "digits", "task": "generative", "architecture": {"name": "toy-vae"},
            "weights": {"file": weights.name, "sha256": sha256_file(weights)}})
    cards["threat"] = write(tmp_path / "damage.yaml", {"id": "damage-l2-1", "family": "reconstruction-damage",
                                                      "params": {"eps": 1.0}})
    return cards


def test_a_generative_family_runs_through_the_cli_the_store_and_the_board(toy_generative, tmp_path):
    results = tmp_path / "results"
    for name in ("jumpy-vae", "steady-vae"):
        r = invoke("run", "--model", toy_generative[name], "--threat", toy_generative["threat"], "--n", 60,
                   "--results", results)
        assert r.exit_code == 0, r.output
        assert "reconstruction damage" in r.output and "clean ELBO" in r.output and "accuracy" not in r.output
    board = json.loads(invoke("board", "--results", results, "--format", "json").stdout)
    assert [row["model"] for row in board] == ["steady-vae", "jumpy-vae"]  # lower damage ranks first
    assert board[0]["damage"] < board[1]["damage"] and board[0]["rank"] == 1
    assert not any(key.endswith("_acc") for key in board[0])  # no classifier column
    text = invoke("board", "--results", results).output
    assert "ranked by reconstruction damage (per-pixel MSE), lower is better" in text
    rows = bench.store.Store(results).query("SELECT * FROM rows")
    assert "label" not in rows and {"clean_elbo", "clean_recon", "damage"} <= set(rows)


def test_a_generative_card_is_refused_by_classifier_threats(toy_generative, tmp_path):
    with pytest.raises(BenchError, match="evaluates classifier models, but jumpy-vae is a generative model"):
        bench.evaluate(str(toy_generative["jumpy-vae"]), threat("pgd", norm="Linf", eps=0.1, steps=2), n=10,
                       results=tmp_path, progress=False)
    summary = bench.evaluate(str(toy_generative["jumpy-vae"]), "clean", n=20, results=tmp_path, progress=False)
    assert summary.headline == "clean_elbo" and list(summary.metrics) == ["clean_elbo", "clean_recon"]


# --- tensors the caller holds ---------------------------------------------------------------------------


def test_tensors_the_caller_holds_are_evaluated_and_identified_by_content(digits_model, tmp_path):
    x, y = bench.load_data("digits", n=80)
    kw = dict(results=tmp_path, progress=False, device="cpu")
    first = bench.evaluate(digits_model, threat("pgd", norm="Linf", eps=0.1, steps=5), x=x, y=y, **kw)
    with torch.no_grad():
        expected = (digits_model(x).argmax(1) == y).float().mean().item()
    assert first.n == 80 and first.clean_acc == pytest.approx(expected) and first.dataset == "tensors"
    again = bench.evaluate(digits_model, threat("pgd", norm="Linf", eps=0.1, steps=5), x=x, y=y, **kw)
    assert again.run_id == first.run_id
    relabelled = bench.evaluate(digits_model, threat("pgd", norm="Linf", eps=0.1, steps=5), x=x, y=(y + 1) % 10, **kw)
    assert relabelled.run_id != first.run_id and relabelled.clean_acc < 0.2
    part = bench.evaluate(digits_model, "clean", x=x, y=y, n=30, dataset="digits", **kw)
    assert part.n == 30 and part.dataset == "digits"
    with pytest.raises(BenchError, match="defined for mnist, not tensors"):
        bench.evaluate(digits_model, "pgd-linf-0.3", x=x, y=y, **kw)
    with pytest.raises(BenchError, match="values in \\[0, 1\\]"):
        bench.evaluate(digits_model, "clean", x=x * 255, y=y, **kw)
    with pytest.raises(BenchError, match="one class index per image"):
        bench.evaluate(digits_model, "clean", x=x, y=y[:5], **kw)
