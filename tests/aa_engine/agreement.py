"""The cases on which our AutoAttack engine must agree with the official package, and the official's outcomes on
them as a committed fixture (``official_autoattack.json``), so that CI compares without running the official.

Every shipped MNIST classifier on MNIST's first test points, robust and not (at the card's radius, and at smaller
ones where a standard model keeps some points, so that every stage has points to attack), and the CIFAR-10
ResNet-18 that ships inside the official package at the card radii (a smaller one, where points survive to the
later stages, costs minutes per point on a CPU) on the 20 CIFAR-10 test images that ship inside foolbox 3.3.4
(``fixtures/cifar10``, copied byte for byte from the wheel, sha256 11049d51…89cb; the label is the file name's
last field). Each fixture entry keeps the official run's key (model weights, protocol, data, n, seed), so a
changed model, card or data fails the comparison instead of being compared to another question's answer.

Regenerate (about 15 min on 2 CPU cores): ``python tests/aa_engine/agreement.py``.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import bench
from bench.run import SAME_QUESTION
from bench.store import Store
from bench.testing import threat_card

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "official_autoattack.json"


def paired_tolerance(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far two attacks' robust counts on the same points may differ by chance: 3.5 standard errors of the
    paired difference (the points only one of them breaks: sd sqrt(b + c) under equal strength), plus one."""
    return 3.5 * math.sqrt(int((a != b).sum())) + 1


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str
    n: int
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        p = self.params
        return f"{self.model}/{p['version']}-{p['norm']}-{p['eps']:.4g}/n{self.n}"


def _aa(norm: str, eps: float, version: str = "standard") -> dict:
    return {"norm": norm, "eps": eps, "version": version}


CASES = [
    Case("mnist-cnn-pgd-at", "mnist", 200, _aa("Linf", 0.3)),
    Case("mnist-cnn-pgd-at", "mnist", 40, _aa("Linf", 0.3, "rand")),
    Case("mnist-cnn-standard", "mnist", 100, _aa("Linf", 0.3)),
    Case("mnist-cnn-standard", "mnist", 100, _aa("Linf", 0.1)),
    Case("mnist-cnn-standard", "mnist", 100, _aa("L2", 1.0)),
    Case("mnist-cnn-standard", "mnist", 50, _aa("L1", 8.0)),
    Case("mnist-lenet-standard", "mnist", 100, _aa("Linf", 0.3)),
    Case("mnist-lenet-standard", "mnist", 100, _aa("Linf", 0.1)),
    Case("mnist-cnn-ood2id", "mnist", 40, _aa("Linf", 0.3)),
    Case("cifar10-resnet18-standard", "cifar10", 20, _aa("Linf", 8 / 255)),
    Case("cifar10-resnet18-standard", "cifar10", 20, _aa("L2", 0.5)),
]


def cifar10_samples() -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    files = sorted((HERE / "fixtures" / "cifar10").glob("cifar10_*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files])
    y = [int(f.stem.rsplit("_", 1)[1]) for f in files]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y)


def run(case: Case, engine: str, results: Path) -> dict:
    """Evaluate the case with one engine; its outcome as the fixture keeps it."""
    data = dict(zip(("x", "y"), cifar10_samples())) if case.dataset == "cifar10" else {}
    summary = bench.evaluate(case.model, threat_card("autoattack", f"aa-{engine}", engine=engine, **case.params),
                             dataset=case.dataset, n=case.n, seed=0, device="cpu", batch_size=case.n,
                             results=results, progress=False, train=False, **data)
    store = Store(results)
    rows = store.query("SELECT clean_correct, robust FROM rows WHERE run_id = ? ORDER BY index", [summary.run_id])
    key = store.run_meta(summary.run_id)["key"]
    return {"case": case.name, "key": {k: key[k] for k in SAME_QUESTION},
            "clean": "".join(str(int(v)) for v in rows.clean_correct),
            "robust": "".join(str(int(v)) for v in rows.robust),
            "broken_by": {k.split(":", 1)[1]: v for k, v in summary.stats.items() if k.startswith("broken_by:")},
            "checks": sorted(n for n in summary.notes if n.startswith("AutoAttack check:"))}


def official_outcomes() -> dict[str, dict]:
    entries = json.loads(FIXTURE.read_text())["cases"]
    return {e["case"]: e for e in entries}


def main(results: Path) -> None:
    from importlib import metadata

    cases = []
    for case in CASES:
        print(f"official AutoAttack on {case.name}", file=sys.stderr, flush=True)
        cases.append(run(case, "official", results))
    FIXTURE.write_text(json.dumps({"pyautoattack": metadata.version("pyautoattack"), "torch": torch.__version__,
                                   "threads": torch.get_num_threads(), "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-results/aa-agreement"))
