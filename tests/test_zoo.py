"""``robustbench:NAME[:DATASET:THREAT]`` model references, offline: a fake RobustBench cache laid out as its
``load_model`` lays it out (``<model_dir>/<dataset>/<threat>/<NAME>.pt``, a torch pickle of ``{'state_dict':
...}`` with DataParallel's ``module.`` prefixes), holding randomly initialised weights of the right shapes."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import bench
from bench.errors import CardError, WeightsError
from bench.models import create, load_model_card
from bench.models.archs import build as build_arch
from bench.models.assemble import trained_weights
from bench.models.build import probes
from bench.models.weights import sha256_file
from bench.models.wrapper import Normalized
from bench.models.zoo import ZOO, card_id, parse, search_dirs

AUGMIX = "robustbench:Hendrycks2020AugMix_WRN:cifar10:corruptions"  # WRN-40-2: the smallest listed zoo model
HALF = [0.5, 0.5, 0.5]
CIFAR = ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616])


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    """An empty RobustBench model_dir that bench searches (and nothing else)."""
    folder = tmp_path / "rb-models"
    monkeypatch.setenv("BENCH_ROBUSTBENCH_DIR", str(folder))
    return folder


def fresh(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """An architecture with random weights and batch-norm statistics (so eval mode is not the identity)."""
    torch.manual_seed(seed)
    net = build_arch(arch, {"num_classes": 10, **kwargs}, "test")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def save_zoo(folder: Path, name: str, state: dict, dataset: str = "cifar10", threat: str = "corruptions",
             wrapper: str | None = "state_dict") -> Path:
    """Save as RobustBench checkpoints come: DataParallel prefixes, inside a {'state_dict': ...} wrapper."""
    path = folder / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in state.items()}
    torch.save({wrapper: state, "epoch": 100} if wrapper else state, path)
    return path


def augmix(zoo: Path, seed: int = 0) -> tuple[nn.Module, Path]:
    net = fresh("wrn", seed, depth=40, widen_factor=2)
    return net, save_zoo(zoo, "Hendrycks2020AugMix_WRN", net.state_dict())


def outputs(model: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


# --- the reference makes a card --------------------------------------------------------------------------


def test_a_reference_makes_a_card_with_architecture_normalisation_and_sha256(zoo):
    _, path = augmix(zoo)
    card = load_model_card(AUGMIX)
    assert card.id == "robustbench-cifar10-corruptions-Hendrycks2020AugMix_WRN" and card.task == "classifier"
    assert card.dataset == "cifar10" and card.source_dir is None
    assert card.architecture.name == "wrn" and card.architecture.kwargs == {"depth": 40, "widen_factor": 2,
                                                                            "num_classes": 10}
    assert card.normalization.mean == HALF and card.normalization.std == HALF
    assert card.weights.robustbench.name == "Hendrycks2020AugMix_WRN"
    assert card.weights.robustbench.threat_model == "corruptions" and card.weights.sha256 == sha256_file(path)
    assert load_model_card(AUGMIX).hash == card.hash  # deterministic


def test_dataset_and_threat_default_to_cifar10_linf_and_are_spelled_as_robustbench_spells_them():
    assert parse("robustbench:Carmon2019Unlabeled") == ("Carmon2019Unlabeled", "cifar10", "Linf")
    assert parse("robustbench:Standard:CIFAR10:l2") == ("Standard", "cifar10", "L2")
    assert parse("robustbench:Standard:cifar10:corruptions_3d") == ("Standard", "cifar10", "corruptions")
    assert card_id("Standard", "cifar10", "L2") == "robustbench-cifar10-L2-Standard"
    for required in ("Standard", "Carmon2019Unlabeled", "Wong2020Fast", "Engstrom2019Robustness"):
        assert required in ZOO["cifar10", "Linf"]
    for bad, says in [("robustbench:", "not robustbench:NAME"), ("robustbench:A:b:c:d", "not robustbench:NAME"),
                      ("robustbench:Standard:cifar10:Linfty", "did you mean 'linf'"),
                      ("robustbench:Standard:mnist:Linf", "no dataset 'mnist'")]:
        with pytest.raises(CardError, match=says):
            parse(bad)


def test_the_model_loads_and_computes_what_the_saved_one_does(zoo):
    net, _ = augmix(zoo)
    model = create(AUGMIX)
    assert isinstance(model, Normalized) and not model.training
    assert torch.equal(outputs(model), outputs(Normalized(net, HALF, HALF)))
    # the same through the Python API's loader
    assert torch.equal(outputs(bench.load_model(AUGMIX)), outputs(model))


def test_carmon2019_is_a_wrn_28_10_whose_unused_sub_block_is_dropped(zoo):
    net = fresh("wrn", depth=28, widen_factor=10)
    extra = fresh("wrn", 1, depth=28, widen_factor=10).block1.state_dict()  # RobustBench's sub_block1: never used
    state = {**net.state_dict(), **{f"sub_block1.{k}": v for k, v in extra.items()}}
    save_zoo(zoo, "Carmon2019Unlabeled", state, threat="Linf")
    card = load_model_card("robustbench:Carmon2019Unlabeled")
    assert card.id == "robustbench-cifar10-Linf-Carmon2019Unlabeled" and card.normalization is None
    assert (card.architecture.name, card.architecture.kwargs) == ("wrn", {"depth": 28, "widen_factor": 10,
                                                                          "num_classes": 10})
    assert torch.equal(outputs(create(card)), outputs(net))


class RobustBenchPreActBlock(nn.Module):
    """RobustBench's PreActBlock, written from its description: the projection shortcut reads the raw input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + (self.shortcut(x) if hasattr(self, "shortcut") else x)


class RobustBenchPreActResNet18(nn.Module):
    """RobustBench's PreActResNet(PreActBlock, [2, 2, 2, 2]): no batch norm before the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        widths, cin = [64, 128, 256, 512], 64
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(RobustBenchPreActBlock(cin, w, 1 if i == 0 else 2),
                                                         RobustBenchPreActBlock(w, w, 1)))
            cin = w
        self.linear = nn.Linear(512, 10)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def test_wong2020_is_robustbench_s_preact_resnet18_with_cifar_normalisation(zoo):
    torch.manual_seed(0)
    reference = RobustBenchPreActResNet18()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    reference.eval()
    save_zoo(zoo, "Wong2020Fast", reference.state_dict(), threat="Linf", wrapper=None)
    card = load_model_card("robustbench:Wong2020Fast")
    assert card.architecture.name == "preact-resnet18" and card.normalization.mean == CIFAR[0]
    assert torch.allclose(outputs(create(card)), outputs(Normalized(reference, *CIFAR)), atol=1e-5)
    # Andriushchenko2020's checkpoint keeps its weights under 'last' (and 'best'): the zoo takes 'last'
    path = zoo / "cifar10" / "Linf" / "Andriushchenko2020Understanding.pt"
    torch.save({"last": reference.state_dict(), "best": {}}, path)
    assert torch.allclose(outputs(create("robustbench:Andriushchenko2020Understanding")), outputs(reference),
                          atol=1e-5)


def test_engstrom2019_is_a_resnet50_and_l2_is_another_zoo(zoo):
    net = fresh("resnet50")
    save_zoo(zoo, "Engstrom2019Robustness", net.state_dict(), threat="L2")
    card = load_model_card("robustbench:Engstrom2019Robustness:cifar10:L2")
    assert card.id == "robustbench-cifar10-L2-Engstrom2019Robustness" and card.architecture.name == "resnet50"
    assert card.normalization.std == [0.2023, 0.1994, 0.2010]
    assert torch.equal(outputs(create(card)), outputs(Normalized(net, card.normalization.mean, card.normalization.std)))


# --- identity ------------------------------------------------------------------------------------------------


def test_the_checkpoint_s_sha256_is_in_the_run_key_and_a_changed_file_changes_it(zoo):
    from bench.spec import plan, spec_of

    _, path = augmix(zoo)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    first = spec_of(plan(AUGMIX, "clean", x=x, y=y, dataset="cifar10", device="cpu"))
    assert first.model["card"]["weights"]["sha256"] == sha256_file(path)
    augmix(zoo, seed=1)  # another checkpoint under the same name
    second = spec_of(plan(AUGMIX, "clean", x=x, y=y, dataset="cifar10", device="cpu"))
    assert second.model["card"]["weights"]["sha256"] == sha256_file(path) != first.model["card"]["weights"]["sha256"]
    assert second.key["model"] != first.key["model"] and second.run_id != first.run_id
    # a card made before the file changed refuses to load the new one
    stale = bench.models.ModelCard.model_validate({**first.model["card"], "source_dir": None})
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create(stale)


def test_the_python_api_evaluates_a_reference(zoo, tmp_path):
    net, _ = augmix(zoo)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = Normalized(net, HALF, HALF)(x).argmax(1)
    summary = bench.evaluate(AUGMIX, "clean", x=x, y=y, dataset="cifar10", device="cpu", progress=False,
                             results=tmp_path / "results")
    assert summary.metrics["clean_acc"].value == 1.0  # the labels are the saved model's own predictions


# --- refusals ------------------------------------------------------------------------------------------------


def test_a_missing_checkpoint_says_where_it_looked_and_how_to_get_it(zoo):
    with pytest.raises(WeightsError) as err:
        load_model_card("robustbench:Carmon2019Unlabeled")
    assert str(zoo / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in err.value.problem
    assert "load_model('Carmon2019Unlabeled'" in err.value.fix and "BENCH_ROBUSTBENCH_DIR" in err.value.fix
    assert "https://drive.google.com/uc?id=15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ" in err.value.fix


def test_without_the_variable_bench_searches_its_cache_and_robustbench_s_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_ROBUSTBENCH_DIR", raising=False)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    assert search_dirs() == [tmp_path / "cache" / "robustbench", Path.cwd() / "models"]


def test_an_unknown_name_says_did_you_mean_and_how_to_write_a_card(zoo):
    with pytest.raises(CardError) as err:
        load_model_card("robustbench:Carmon2019Unlabelled")
    assert "unknown RobustBench model 'Carmon2019Unlabelled'" in err.value.problem
    assert "did you mean 'Carmon2019Unlabeled'" in err.value.fix and "model card by hand" in err.value.fix
    with pytest.raises(CardError) as err:
        load_model_card("robustbench:Wong2020Fast:cifar10:L2")
    assert "robustbench:Wong2020Fast:cifar10:Linf" in err.value.fix  # listed under another threat model


def test_a_checkpoint_that_is_not_weights_only_is_refused_clearly(zoo):
    net = fresh("wrn", depth=40, widen_factor=2)
    path = zoo / "cifar10" / "corruptions" / "Hendrycks2020AugMix_WRN.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    card = load_model_card(AUGMIX)  # hashing reads no pickle
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "Python objects beyond tensors" in err.value.problem and "Namespace" in err.value.problem
    assert "weights_only" in err.value.fix


def test_a_checkpoint_of_another_architecture_or_over_the_size_cap_is_refused(zoo, monkeypatch):
    save_zoo(zoo, "Hendrycks2020AugMix_WRN", fresh("wrn", depth=10, widen_factor=1).state_dict())
    with pytest.raises(WeightsError, match="do not fit its architecture"):
        create(AUGMIX)
    monkeypatch.setenv("BENCH_DOWNLOAD_MAX_BYTES", "1000")
    with pytest.raises(WeightsError, match="over the 1,000 bytes"):
        load_model_card(AUGMIX)


# --- hand-written robustbench cards ------------------------------------------------------------------------


def test_a_hand_written_robustbench_card_reads_the_local_cache_first(zoo):
    torch.manual_seed(0)
    reference = RobustBenchPreActResNet18().eval()
    path = save_zoo(zoo, "Wong2020Fast", reference.state_dict(), threat="Linf")
    card = load_model_card("cifar10-preact-resnet18-wong2020")  # no architecture, no sha256: the package's card
    assert card.architecture is None and card.weights.sha256 is None
    model = create(card)  # offline, no robustbench package
    assert torch.allclose(outputs(model), outputs(Normalized(reference, *CIFAR)), atol=1e-5)
    assert trained_weights([card]) == {"cifar10-preact-resnet18-wong2020@robustbench": sha256_file(path)}
    assert len(probes(card)) == 1  # its input shape is checked before a run, as for any card


def test_a_hand_written_card_of_a_model_bench_does_not_list_needs_the_package(zoo, tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "zoo-other.yaml").write_text("id: zoo-other\ndataset: cifar10\n"
                                           "weights: {robustbench: {name: Peng2023Robust}}\n")
    with pytest.raises(CardError, match="unknown RobustBench model 'Peng2023Robust'"):
        create(folder / "zoo-other.yaml")


# --- command line ------------------------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for k in range(10):
        (root / f"class{k}").mkdir(parents=True)
        pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"class{k}" / "0.png")
    return root


def test_bench_run_takes_a_reference(zoo, tmp_path):
    from bench.cli import app

    augmix(zoo)
    data = _image_folder(tmp_path / "images")
    done = CliRunner().invoke(app, ["run", "--model", AUGMIX, "--threat", "clean", "--dataset", f"folder:{data}",
                                    "--n", "8", "--device", "cpu", "--results", str(tmp_path / "results")])
    assert done.exit_code == 0, done.output
    assert "robustbench-cifar10-corruptions-Hendrycks2020AugMix_WRN" in done.output
    wrong = CliRunner().invoke(app, ["run", "--model", "robustbench:Standart", "--threat", "clean",
                                     "--results", str(tmp_path / "results")])
    assert wrong.exit_code != 0 and "did you mean 'Standard'" in wrong.output
    assert "Traceback" not in wrong.output
