"""Fingerprints of the threat families: what each family's card under ``cards/`` computes on a tiny model with
committed weights (``models/``), recorded in ``<family>.json`` with the implementation identity it was made
under.

A fingerprint holds the run's stored rows and a trace of every top-level module call the run made (the
module's class, and the sum and sum of squares of its input), so a change to an attack's step, a start, a
schedule or a clean pass shows even where no stored row moves. ``test_fingerprints.py`` recomputes them:
outputs that changed under an unchanged identity mean a forgotten revision bump.

The same code can compute the tiny models' passes differently on another machine (the CPU's kernels sum in
another order; seen between two x86 servers, torch and the packages the same): last-bit differences that an
attack's trajectory can amplify. Each fingerprint therefore records ``platform``, a digest of the tiny models'
passes on the recording machine (``platform_signature``), and may hold ``platforms``: the outputs of the same
code recorded on other machines (``update.py --platform``). A machine compares with its own recording where
there is one; a change of code still shows on every machine.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

FOLDER = Path(__file__).resolve().parent
N, BATCH = 24, 12  # two shards: the per-shard seeds are part of what is fingerprinted
VOLATILE = {"seconds", "run_id", "shard"}
RTOL, ATOL = 1e-5, 1e-6
MODELS = {"classifier": "digits-cnn", "perturbation-set": "digits-cvae", "generative": "digits-vae"}
MODEL_OF = {"vae-lipschitz-margin": "digits-lipschitz-vae"}  # families that need a model of their own kind
# Fingerprints of a family's other code paths (``<family>@<variant>``, card ``cards/<family>@<variant>.yaml``), with
# the revision that guards each: a card field that picks other code (an engine) must have its outputs pinned too
VARIANTS = {"autoattack@bench": "bench.threats.aa_engine.engine.ENGINE_REVISION"}


def family_of(key: str) -> str:
    """The family a fingerprint key names (``autoattack@bench`` -> ``autoattack``)."""
    return key.split("@", 1)[0]


def model_card(family: str) -> Path:
    from bench.threats import THREAT_FAMILIES

    name = MODEL_OF.get(family) or MODELS[THREAT_FAMILIES.get(family).tasks[0]]
    return FOLDER / "models" / f"{name}.yaml"


@contextlib.contextmanager
def traced() -> Any:
    """Record every top-level module call (a call made while no other module call is running)."""
    calls: list[list] = []
    depth = [0]

    def before(module, args):
        if depth[0] == 0:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is not None and x.is_floating_point():
                flat = x.detach().double()
                calls.append([type(module).__name__, int(x.numel()), _digits(flat.sum()), _digits((flat * flat).sum())])
        depth[0] += 1

    def after(module, args, output):
        depth[0] -= 1

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(before),
               torch.nn.modules.module.register_module_forward_hook(after)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _digits(value) -> float:
    """A float kept to 10 significant digits (the comparison's tolerance is 1e-5): a smaller fixture."""
    return float(f"{float(value):.10g}")


def compute(key: str, results: Path) -> dict[str, Any]:
    """The fingerprint of a family (or of one of its ``VARIANTS``), computed now (one CPU thread, seed 0)."""
    import bench
    from bench.implementation import implementation
    from bench.store import Store
    from bench.tasks import TASKS
    from bench.threats import load_threat_card, make_threat

    family = family_of(key)
    card, threat = make_threat(load_threat_card(FOLDER / "cards" / f"{key}.yaml"))
    model = model_card(family)
    with traced() as calls:
        summary = bench.evaluate(str(model), card, dataset="digits", n=N, batch_size=BATCH, seed=0, threads=1,
                                 results=results, progress=False)
    rows = Store(results).read_run(summary.run_id).rows.drop(columns=list(VOLATILE), errors="ignore")
    rows = rows.sort_values("index").reset_index(drop=True)
    return {"family": key, "implementation": implementation(family, threat, TASKS.get(summary.task)),
            "card": card.model_dump(mode="json", exclude={"description"}), "model": model.stem, "n": N,
            "platform": platform_signature(), "rows": {c: rows[c].tolist() for c in rows.columns}, "calls": calls}


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and (math.isnan(a) or math.isnan(b)):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= ATOL + RTOL * abs(b)


def compare(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Where the current outputs differ from the recorded ones (empty: the same, to float tolerance)."""
    problems = []
    old, new = recorded["rows"], current["rows"]
    if set(old) != set(new):
        problems.append(f"columns {sorted(old)} recorded, {sorted(new)} now")
    for column in sorted(set(old) & set(new)):
        a, b = old[column], new[column]
        differ = len(a) != len(b) or any(
            not _close(float(u), float(v)) if isinstance(u, float) or isinstance(v, float) else u != v
            for u, v in zip(a, b))
        if differ:
            problems.append(f"column {column} changed")
    calls_old, calls_new = recorded["calls"], current["calls"]
    if len(calls_old) != len(calls_new):
        problems.append(f"{len(calls_old)} model calls recorded, {len(calls_new)} now")
    else:
        first = next((i for i, (a, b) in enumerate(zip(calls_old, calls_new))
                      if a[:2] != b[:2] or not (_close(a[2], b[2]) and _close(a[3], b[3]))), None)
        if first is not None:
            problems.append(f"model call {first} ({calls_new[first][0]}) sees other inputs than recorded")
    return problems


@functools.cache
def platform_signature() -> str:
    """A digest of the bits of the tiny classifier's logits and the tiny VAE's reconstructions on 12 digits
    (one thread): equal on machines that compute those passes alike."""
    import bench
    from bench.data import load_dataset

    x = load_dataset("digits", "test").x[:12]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            outputs = [bench.load_model(str(FOLDER / "models" / f"{name}.yaml")).eval()(x)
                       for name in ("digits-cnn", "digits-vae")]
    finally:
        torch.set_num_threads(threads)
    return hashlib.sha256(b"".join(o.float().numpy().tobytes() for o in outputs)).hexdigest()[:12]


def expected(recorded: dict[str, Any]) -> dict[str, Any]:
    """What this machine should compute: its own recording of the family's outputs where there is one."""
    own = recorded.get("platforms", {}).get(platform_signature())
    return {**recorded, **own} if own and recorded.get("platform") != platform_signature() else recorded


def elsewhere(recorded: dict[str, Any], platform_command: str) -> str:
    """The hint a failure adds on a machine without a recording of its own: it may compute the tiny models' passes
    differently, in which case ``platform_command`` records its outputs (empty where it has a recording)."""
    here = platform_signature()
    if here == recorded.get("platform") or here in recorded.get("platforms", {}):
        return ""
    return (f" This machine computes the tiny models' passes unlike the one that recorded it (platform {here}, "
            f"recorded on {recorded.get('platform', 'an unrecorded one')}): if no code changed (the same failure on "
            f"a clean checkout of main), record this machine's outputs with `{platform_command}`.")


def write(fingerprint: dict[str, Any]) -> Path:
    path = FOLDER / f"{fingerprint['family']}.json"
    path.write_text(json.dumps(fingerprint, separators=(",", ":")) + "\n")
    return path


def read(family: str) -> dict[str, Any] | None:
    path = FOLDER / f"{family}.json"
    return json.loads(path.read_text()) if path.is_file() else None
