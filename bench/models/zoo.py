"""RobustBench's model zoo without RobustBench: ``robustbench:NAME[:DATASET[:THREAT]]`` as a model reference.

A RobustBench user names a zoo model (``robustbench:Carmon2019Unlabeled``, dataset ``cifar10`` and threat
``Linf`` by default, or ``robustbench:Engstrom2019Robustness:cifar10:L2``); ``card_data`` makes the model card
from ``ZOO`` below (the architecture, its keyword arguments and the input normalisation of each entry, read
off RobustBench's ``model_zoo`` and its architectures: bench cannot import robustbench) and from the
checkpoint on disk, whose sha256 goes into the card, so a changed file changes the card's hash and every run
key. Checkpoints sit where RobustBench's ``load_model`` puts them, ``<model_dir>/<dataset>/<threat>/<NAME>.pt``:
``model_dir`` is $BENCH_ROBUSTBENCH_DIR (several joined by ``os.pathsep``) if set, else bench's cache
(``$BENCH_CACHE/robustbench``, where the optional robustbench package downloads for bench) and RobustBench's
default ``./models``. They are torch pickles, read with the weights-only loader (capped at
$BENCH_DOWNLOAD_MAX_BYTES); wrappers (``state_dict``, ``last``) and ``module.`` / ``model.`` prefixes are
stripped, and the parameters RobustBench's architectures hold but never use (``sub_block1``) dropped.

Only entries whose architecture bench has are listed (WideResNets, ResNet-18/-50, PreAct ResNet-18);
another zoo model needs a card written by hand (architecture, normalization, ``weights.file`` + sha256).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.digests import sha256_cached
from bench.downloads import max_bytes
from bench.errors import CardError, WeightsError, did_you_mean
from bench.files import cache_dir

if TYPE_CHECKING:  # torch is imported by what loads a model, not by parsing a reference or naming an unknown one
    import torch
    from torch import nn

PREFIX = "robustbench:"
ENV = "BENCH_ROBUSTBENCH_DIR"
DATASETS = ("cifar10", "cifar100", "imagenet")  # RobustBench's BenchmarkDataset values
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions", "corruptions_3d": "corruptions"}
NORM_BUFFERS = ("mu", "sigma")  # RobustBench's normalisation buffers, when a checkpoint holds them


@dataclass(frozen=True)
class Entry:
    """One zoo model as bench builds it: ``mean``/``std`` are the normalisation RobustBench's model applies to
    [0, 1] inputs (None: none); ``key`` the checkpoint's entry holding the weights (Andriushchenko2020's
    ``last``); ``unused`` key prefixes a checkpoint holds for modules the forward pass never calls."""

    arch: str
    kwargs: dict[str, Any]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    key: str | None = None
    unused: tuple[str, ...] = ()
    gdrive: str | None = field(default=None, compare=False)

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        return None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}


CIFAR = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
ENGSTROM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
AUGUSTIN = ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
            (0.24703225141799082, 0.24348516474564, 0.26158783926049628))
RONY = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _wrn(depth: int, widen: int, gdrive: str, *, sub_block1: bool = False, norm=None) -> Entry:
    mean, std = norm or (None, None)
    return Entry("wrn", {"depth": depth, "widen_factor": widen, "num_classes": 10}, mean, std,
                 unused=("sub_block1.",) if sub_block1 else (), gdrive=gdrive)


def _resnet(arch: str, gdrive: str, *, norm=None, key: str | None = None, **kwargs) -> Entry:
    mean, std = norm or (None, None)
    return Entry(arch, {"num_classes": 10, **kwargs}, mean, std, key=key, gdrive=gdrive)


# RobustBench's PreActResNet(PreActBlock, ...): no batch norm before the classifier, shortcut from the raw input.
RB_PREACT = {"final_bn": False, "activated_shortcut": False}

ZOO: dict[tuple[str, str], dict[str, Entry]] = {
    ("cifar10", "Linf"): {
        "Andriushchenko2020Understanding": _resnet("preact-resnet18", "1Uyvprd98bIyxfMjLdCZwm-NEJ-6GMVis",
                                                   key="last", **RB_PREACT),
        "Carmon2019Unlabeled": _wrn(28, 10, "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ", sub_block1=True),
        "Sehwag2020Hydra": _wrn(28, 10, "1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y", sub_block1=True),
        "Wang2020Improving": _wrn(28, 10, "1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ", sub_block1=True),
        "Hendrycks2019Using": _wrn(28, 10, "1-DcJsYw2dNEOyF9epks2QS7r9nqBDEsw", norm=HALF),  # 2x - 1
        "Rice2020Overfitting": _wrn(34, 20, "1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-", norm=CIFAR),
        "Zhang2019Theoretically": _wrn(34, 10, "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_", sub_block1=True),
        "Engstrom2019Robustness": _resnet("resnet50", "1etqmQsksNIWBvBQ4r8ZFk_3FJlLWr8Rr", norm=ENGSTROM),
        "Huang2020Self": _wrn(34, 10, "1nInDeIyZe2G-mJFxQJ3UoclQNomWjMgm", sub_block1=True),
        "Wong2020Fast": _resnet("preact-resnet18", "1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv", norm=CIFAR, **RB_PREACT),
        "Zhang2019You": _wrn(34, 10, "1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA", sub_block1=True),
        "Zhang2020Attacks": _wrn(34, 10, "1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk", sub_block1=True),
        "Wu2020Adversarial_extra": _wrn(28, 10, "1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp", sub_block1=True),
        "Wu2020Adversarial": _wrn(34, 10, "13LBcgNvhFppCFG22i1xATrahFPfMgXGf"),
        "Sehwag2021Proxy": _wrn(34, 10, "1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm"),
        "Sehwag2021Proxy_R18": _resnet("resnet18", "1-ZgoSlD_AMhtXdnUElilxVXnzK2DcHuu"),
        "Sitawarin2020Improving": _wrn(34, 10, "12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6", sub_block1=True),
        "Chen2020Efficient": _wrn(34, 10, "1c5EXpd3Kn_s6qQIbkLX3tTOOPC8VslHg", sub_block1=True, norm=CIFAR),
        "Cui2020Learnable_34_20": _wrn(34, 20, "1y7BUxPhQjNlb4w4BUlDyYJIS4w4fsGiS", sub_block1=True),
        "Cui2020Learnable_34_10": _wrn(34, 10, "16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV", sub_block1=True),
        "Zhang2020Geometry": _wrn(28, 10, "1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk", sub_block1=True),
        "Sridhar2021Robust": _wrn(28, 10, "1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0", sub_block1=True),
        "Sridhar2021Robust_34_15": _wrn(34, 15, "1-3ii3GX93YqIcmJ3VNsOgYA7ecdnSZ0Z", sub_block1=True),
        "Addepalli2021Towards_RN18": _resnet("resnet18", "1-1DxecXz5U_xZ54DVdE-GVm71Tiox-Ri"),
        "Addepalli2021Towards_WRN34": _wrn(34, 10, "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB", sub_block1=True),
        "Chen2021LTD_WRN34_10": _wrn(34, 10, "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D"),
        "Chen2021LTD_WRN34_20": _wrn(34, 20, "1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm"),
        "Standard": _wrn(28, 10, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
        "Jia2022LAS-AT_34_10": _wrn(34, 10, "1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD"),
        "Jia2022LAS-AT_70_16": _wrn(70, 16, "1-4p-Gr0hjl8wq6qvvTza4x4a5Rmu-Bfr"),
        "Addepalli2022Efficient_RN18": _resnet("resnet18", "1m5vhdzIUUKhDbsZdOG9z76Eyp6f4xe_f"),
        "Addepalli2022Efficient_WRN_34_10": _wrn(34, 10, "1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA"),
        "Cui2023Decoupled_WRN-34-10": _wrn(34, 10, "1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN"),
        "Chen2024Data_WRN_34_10": _wrn(34, 10, "1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R"),
        "Chen2024Data_WRN_34_20": _wrn(34, 20, "1-IbKAGtp79tAEm59N0i8QMvMZ3nxSD2-"),
    },
    ("cifar10", "L2"): {
        "Augustin2020Adversarial": _resnet("resnet50", "1oDghrzNfkStC2wr5Fq8T896yNV4wVG4d", norm=AUGUSTIN),
        "Engstrom2019Robustness": _resnet("resnet50", "1O8rGa6xOUIRwQ-M4ESrCjzknby8TM2ZE", norm=ENGSTROM),
        "Rice2020Overfitting": _resnet("preact-resnet18", "1jo-31utiYNBVzLM0NxUEWz0teo3Z0xa7", norm=CIFAR),
        "Rony2019Decoupling": _wrn(28, 10, "1Oua2ZYSxNvoDrtlY9vTtRzyBWHziE4Uy", norm=RONY),
        "Standard": _wrn(28, 10, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
        "Wu2020Adversarial": _wrn(34, 10, "1M5AZ0EZQt7d2AlTmsnqZcfx91-x7YEAV"),
        "Sehwag2021Proxy": _wrn(34, 10, "1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S"),
        "Sehwag2021Proxy_R18": _resnet("resnet18", "1zPjjZj9wujBNkAmHHHIikem6_aIjMhXG"),
        "Augustin2020Adversarial_34_10": _wrn(34, 10, "1qPsKS546mKcs71IEhzOS-kLpQFSFhaKL", norm=AUGUSTIN),
        "Augustin2020Adversarial_34_10_extra": _wrn(34, 10, "1--1MFZja6C2iVWi9MgetYjnSIenRBLT-", norm=AUGUSTIN),
    },
    ("cifar10", "corruptions"): {
        "Hendrycks2020AugMix_WRN": _wrn(40, 2, "1wy7gSRsUZzCzj8QhmTbcnwmES_2kkNph", norm=HALF),
        **{f"Kireev2021Effectiveness_{variant}": _resnet("preact-resnet18", gdrive, norm=CIFAR, key="last")
           for variant, gdrive in (("Gauss50percent", "1zR6lwYLkO3TFSgeqvu_CMYTq_IS-eicQ"),
                                   ("AugMixNoJSD", "1p_1v1Oa-FSrjHTAq63QX4WtLYETkcbdH"),
                                   ("RLAT", "16bCDA_5Rhr6qMKHRAO5W-4nu9_10kFyF"),
                                   ("RLATAugMixNoJSD", "1hgJuvLPSVQMbUczn8qnIphONlJePsWgU"),
                                   ("RLATAugMix", "19HNTdqJiuNyqFqIarPejniJEjZ3RQ_nj"))},
        "Standard": _wrn(28, 10, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
        "Addepalli2021Towards_WRN34": _wrn(34, 10, "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB", sub_block1=True),
        "Addepalli2022Efficient_WRN_34_10": _wrn(34, 10, "1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA"),
    },
}

HOW_TO_CARD = ("or write a model card by hand (README, 'Model catalogue'): architecture, normalization and "
               "weights.file with its sha256")


# --- references --------------------------------------------------------------------------------------


def parse(reference: str) -> tuple[str, str, str]:
    """``robustbench:NAME[:DATASET[:THREAT]]`` as (name, dataset, threat), RobustBench's spelling of each."""
    parts = reference.removeprefix(PREFIX).split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise CardError(f"model reference {reference!r} is not robustbench:NAME[:DATASET:THREAT]",
                        "e.g. robustbench:Carmon2019Unlabeled or robustbench:Engstrom2019Robustness:cifar10:L2")
    name, dataset, threat = (parts + ["cifar10", "Linf"][len(parts) - 1:])[:3]
    if dataset.lower() not in DATASETS:
        raise CardError(f"model reference {reference!r}: RobustBench has no dataset {dataset!r}",
                        f"{did_you_mean(dataset.lower(), DATASETS)}use one of {', '.join(DATASETS)}")
    if threat.lower() not in THREATS:
        raise CardError(f"model reference {reference!r}: RobustBench has no threat model {threat!r}",
                        f"{did_you_mean(threat.lower(), THREATS)}use Linf, L2 or corruptions")
    return name, dataset.lower(), THREATS[threat.lower()]


def card_id(name: str, dataset: str, threat: str) -> str:
    return f"robustbench-{dataset}-{threat}-{name}"


def entry(name: str, dataset: str, threat: str) -> Entry | None:
    return ZOO.get((dataset, threat), {}).get(name)


def lookup(name: str, dataset: str, threat: str) -> Entry:
    """The zoo entry, or an error with did-you-mean (and the threat models that do list the name)."""
    found = entry(name, dataset, threat)
    if found is not None:
        return found
    known = ZOO.get((dataset, threat), {})
    elsewhere = [f"robustbench:{name}:{d}:{t}" for (d, t), names in ZOO.items() if name in names]
    hint = (f"it is listed as {' and '.join(elsewhere)}; " if elsewhere
            else did_you_mean(name, known) or did_you_mean(name, {n for names in ZOO.values() for n in names}))
    where = f"{dataset} {threat}"
    listed = f"bench lists {len(known)} {where} zoo models" if known else f"bench lists no {where} zoo models"
    raise CardError(f"unknown RobustBench model {name!r} for {where} (or one whose architecture bench lacks; "
                    f"{listed})", f"{hint}check the name against RobustBench's model zoo, {HOW_TO_CARD}")


# --- checkpoints -------------------------------------------------------------------------------------


def search_dirs() -> list[Path]:
    """RobustBench ``model_dir`` folders, in the order they are searched."""
    if os.environ.get(ENV):
        return [Path(p).expanduser() for p in os.environ[ENV].split(os.pathsep) if p]
    return [cache_dir("robustbench"), Path("models").absolute()]  # ./models: RobustBench's default model_dir


def relative(name: str, dataset: str, threat: str) -> Path:
    return Path(dataset) / threat / f"{name}.pt"


def checkpoint(name: str, dataset: str, threat: str) -> Path | None:
    """The first checkpoint file of the model in the search folders, or None."""
    return next((d / relative(name, dataset, threat) for d in search_dirs()
                 if (d / relative(name, dataset, threat)).is_file()), None)


def _package() -> bool:
    return importlib.util.find_spec("robustbench") is not None


def _missing(name: str, dataset: str, threat: str, found: Entry | None) -> WeightsError:
    looked = ", ".join(str(d / relative(name, dataset, threat)) for d in search_dirs())
    target = search_dirs()[0]
    url = f" or download https://drive.google.com/uc?id={found.gdrive} to that path," if found and found.gdrive else ""
    return WeightsError(
        f"no checkpoint of RobustBench model {name} ({dataset}, {threat}); looked for {looked}",
        f"fetch it with RobustBench (pip install robustbench, then: from robustbench.utils import load_model; "
        f"load_model('{name}', "
        f"model_dir='{target}', dataset='{dataset}', threat_model='{threat}')),{url} or point ${ENV} at the "
        "model_dir that holds it")


def fetch(name: str, dataset: str, threat: str, found: Entry | None) -> Path:
    """The checkpoint on disk; if it is missing and the optional robustbench package is installed, it downloads
    it into the first search folder first (needs the network)."""
    from bench.models.weights import load_robustbench, readable

    path = checkpoint(name, dataset, threat)
    if path is None and _package():
        load_robustbench(name, dataset, threat, model_dir=search_dirs()[0])
        path = checkpoint(name, dataset, threat)
    if path is None:
        raise _missing(name, dataset, threat, found)
    return readable(path)


def digest(path: Path) -> str:
    """The checkpoint's sha256, once its size is within $BENCH_DOWNLOAD_MAX_BYTES."""
    size, cap = path.stat().st_size, max_bytes()
    if size > cap:
        raise WeightsError(f"checkpoint {path} is {size:,} bytes, over the {cap:,} bytes bench reads",
                           "raise $BENCH_DOWNLOAD_MAX_BYTES if the file really is that large")
    return sha256_cached(path)


def _unwrap(state: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors",
                           "is it the RobustBench checkpoint? re-download it")
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):  # DataParallel and wrapped checkpoints, as RobustBench strips them
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def read(path: Path, found: Entry | None, normalization: tuple[list[float], list[float]] | None
         ) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as the architecture names them (weights-only loader, wrappers and prefixes
    stripped, unused modules and normalisation buffers that agree with ``normalization`` dropped)."""
    import torch

    from bench.models.weights import load_state_dict

    try:
        state = load_state_dict(path)
    except WeightsError as err:
        raise WeightsError(err.problem, "bench loads only tensors from a checkpoint: re-download it, or, if you "
                           "trust the file, re-save its weights alone (torch.save(torch.load(f, weights_only=False)"
                           "['state_dict'], f))") from err
    state = _unwrap(state, found.key if found else None, path)
    unused = found.unused if found else ("sub_block1.",)
    state = {k: v for k, v in state.items() if not k.startswith(unused)} if unused else state
    for name, expected in zip(NORM_BUFFERS, normalization or ()):
        if name in state:
            if not torch.allclose(state[name].flatten().float(), torch.tensor(expected), atol=1e-6):
                raise WeightsError(f"{path} normalises with {name} = {state[name].flatten().tolist()}, the card "
                                   f"with {expected}", "fix the card's normalization")
            del state[name]
    return state


# --- cards and models --------------------------------------------------------------------------------


def card_data(reference: str) -> dict[str, Any]:
    """The model card of a ``robustbench:`` reference, as data for the card schema; its checkpoint must be on
    disk (or downloadable by the robustbench package), since its sha256 is part of the card."""
    name, dataset, threat = parse(reference)
    found = lookup(name, dataset, threat)
    path = fetch(name, dataset, threat, found)
    data = {"id": card_id(name, dataset, threat), "dataset": dataset, "task": "classifier",
            "architecture": {"name": found.arch, "kwargs": dict(found.kwargs)},
            "weights": {"robustbench": {"name": name, "dataset": dataset, "threat_model": threat},
                        "sha256": digest(path)},
            "description": f"RobustBench zoo model {name} ({dataset}, {threat}), from {path}"}
    if found.normalization is not None:
        data["normalization"] = found.normalization
    return data


def skeleton(name: str, dataset: str, threat: str) -> nn.Module | None:
    """A zoo model with fresh weights (its normalisation included), or None if bench does not list it."""
    from bench.models.archs import build as build_arch
    from bench.models.wrapper import Normalized

    found = entry(name, dataset, threat)
    if found is None:
        return None
    net = build_arch(found.arch, dict(found.kwargs), f"RobustBench model {name}")
    return net if found.mean is None else Normalized(net, list(found.mean), list(found.std))


def load(name: str, dataset: str, threat: str, *, sha256: str | None, architecture: tuple[str, dict] | None,
         normalization: tuple[list[float], list[float]] | None, where: str) -> nn.Module:
    """A zoo model from its checkpoint: into ``architecture`` (the card's; its ``normalization`` is the
    caller's to apply) or, for a card without one, into the zoo entry's architecture with its normalisation.
    A card without an architecture naming a model bench does not list falls back to the robustbench package."""
    from bench.models import weights as W
    from bench.models.archs import build as build_arch
    from bench.models.wrapper import Normalized

    found = entry(name, dataset, threat)
    if architecture is None and found is None:
        if not _package():
            lookup(name, dataset, threat)  # raises: bench does not list it, and nothing else could build it
        return W.load_robustbench(name, dataset, threat, model_dir=search_dirs()[0])
    path = fetch(name, dataset, threat, found)
    if sha256 is not None and digest(path) != sha256:
        raise WeightsError(f"{where}: sha256 mismatch for {path}: the card has {sha256}, the file "
                           f"{sha256_cached(path)}", "the checkpoint changed since the card was made: restore it, "
                           "or make the card again (a robustbench: reference does so on every use)")
    if sha256 is None:
        digest(path)  # the size cap
    arch_name, kwargs = architecture or (found.arch, dict(found.kwargs))
    norm = normalization if architecture is not None else (None if found.mean is None else (found.mean, found.std))
    net = build_arch(arch_name, kwargs, where)
    W.apply_state_dict(net, read(path, found, norm), f"{where} ({path})")
    if architecture is None and found.mean is not None:
        net = Normalized(net, list(found.mean), list(found.std))
    return net
