"""Submitting a model to the leaderboard: check its card, then either run every protocol ``protocols.yaml`` asks
of its dataset and task (``verified`` entries), or spot-check numbers computed elsewhere (``self-reported``).

A submitted card is untrusted input. Before anything runs, every card it is built from must carry a licence,
weight files must match their sha256 and be safetensors (a pickle can run code when loaded, so none is taken,
whatever its extension), and a card whose model is built by an entry point (code) runs only with the
submitter's consent for that package (``--trust-code``).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench.errors import BenchError, NotApplicable, WeightsError
from bench.files import atomic_write, safe_filename
from bench.leaderboard.entries import Entry, entry_from_run, read_entry, read_protocols, save_entry
from bench.leaderboard.spot import SpotCheck, spot_check
from bench.models.card import ModelCard, closure, load_model_card

MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own cap on its JSON header


def refuse_pickle(path: Path, card_id: str) -> None:
    """Refuse a weight file that is not safetensors, reading its first bytes only (nothing is unpickled)."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    header = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if 0 < header <= min(MAX_SAFETENSORS_HEADER, size - 8) and head[8:9] == b"{":
        return
    kind = ("a pickle (torch.save zip archive)" if head.startswith(b"PK\x03\x04") else
            "a pickle" if head[:1] == b"\x80" else "not a safetensors file")
    raise WeightsError(f"model card {card_id}: weight file {path} is {kind}; a pickle can run code when it is "
                       "loaded, so the leaderboard takes safetensors only",
                       "convert it: safetensors.torch.save_file(torch.load(f, weights_only=True), "
                       "'model.safetensors'), then give the new file's sha256 in the card")


def check_card(card: str | Path | ModelCard, trust_code: tuple[str, ...] = ()) -> ModelCard:
    """The submitted card, once it and every card it is built from pass the submission rules."""
    from bench.models.build import weights_file
    from bench.models.weights import trusted_packages

    card = card if isinstance(card, ModelCard) else load_model_card(card)
    trusted = trusted_packages(trust_code)
    for part in closure([card]):
        if not (part.license or "").strip():
            raise BenchError(f"model card {part.id} names no licence", "add license: with an SPDX id (e.g. MIT, "
                             "Apache-2.0) under which the weights may be evaluated and published")
        w = part.weights
        if w is None or w.source == "robustbench":
            continue  # trained here by its recipe, or RobustBench's zoo
        if w.source == "entry_point":
            package = w.entry_point.split(":")[0].split(".")[0]
            if package not in trusted:
                raise WeightsError(f"model card {part.id} builds its model by running code (entry point "
                                   f"{w.entry_point}), and no consent was given to run package {package}; "
                                   "nothing was run", f"if you trust {package}, pass --trust-code {package}")
            continue
        refuse_pickle(weights_file(part), part.id)  # weights_file checks the sha256 first
    return card


def in_catalogue(card: ModelCard) -> ModelCard | None:
    """The catalogue's card of this id if it is this very card (it hashes the same), with its own folder, so
    entries need no copy of it; else None."""
    try:
        found = load_model_card(card.id)
    except BenchError:
        return None
    return found if found.hash == card.hash else None


def publish_card(card: ModelCard, out: Path) -> Path | None:
    """Copy a submitted card (resolved: includes merged) and its weight file into ``out/cards/<id>--<hash>/``,
    so ``verify`` can rebuild the model from the leaderboard alone; nothing for a card of the catalogue."""
    import yaml

    if in_catalogue(card) is not None:
        return None
    folder = out / "cards" / f"{safe_filename(card.id)}--{card.hash[:12]}"
    target = folder / "card.yaml"
    source = card.weights_path if card.weights is not None and card.weights.file is not None else None
    if source is not None:
        inner = Path(card.weights.file)
        if inner.is_absolute() or ".." in inner.parts:
            raise BenchError(f"model card {card.id}: weights.file {card.weights.file} lies outside the card's folder",
                             "put the weight file in the card's folder (or below), or give an https url with sha256")
        (folder / inner).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / inner, lambda tmp: shutil.copyfile(source, tmp))
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(card.model_dump(mode="json", exclude_none=True), sort_keys=False)
    atomic_write(target, lambda tmp: tmp.write_text(text))
    if load_model_card(target).hash != card.hash:
        raise BenchError(f"model card {card.id} does not keep its identity when copied into the leaderboard (it "
                         "refers to other cards by path)", "refer to other cards by catalogue id")
    return target


def submit(card: str | Path | ModelCard, *, out: str | Path = "leaderboard", protocols: str | Path | None = None,
           n: int | None = None, seed: int = 0, batch_size: int = 500, threads: int | None = None,
           device: str | None = "auto", results: str | Path | None = None, trust_code: tuple[str, ...] = (),
           progress: bool = True) -> tuple[list[Path], dict[str, str]]:
    """Run every protocol the leaderboard asks of the card's dataset and task (resuming what was run before)
    and write a verified entry for each under ``out``: the entries, and why each protocol that cannot evaluate
    a model of this kind (e.g. a certificate for another architecture) was skipped."""
    from bench.run import evaluate
    from bench.store import Store
    from bench.summary import read_summary

    card = check_card(card, trust_code)
    protocols = Path(protocols) if protocols is not None else Path(out) / "protocols.yaml"
    required = read_protocols(protocols).required(card.dataset, card.task)
    if not required:
        raise BenchError(f"{protocols} asks no protocol of a {card.task} on {card.dataset}",
                         f"add {card.dataset}: {{{card.task}: [...]}} to it")
    publish_card(card, Path(out))
    store, written, skipped = Store(results), [], {}
    for i, threat in enumerate(required, 1):
        print(f"[{i}/{len(required)}] {card.id} x {threat}", file=sys.stderr, flush=True)
        try:
            summary = evaluate(card, _protocol(threat, protocols), n=n, seed=seed, batch_size=batch_size,
                               threads=threads, device=device, results=results, trust_code=trust_code,
                               progress=progress)
        except NotApplicable as err:
            skipped[threat] = err.problem
            print(f"  not applicable: {err.problem}", file=sys.stderr, flush=True)
            continue
        record = read_summary(store, summary.run_id)
        if record is None:
            raise BenchError(f"the run of {threat} is incomplete ({summary.n} points)", "rerun the command to resume")
        written.append(save_entry(entry_from_run(store, record), Path(out)))
    return written, skipped


def _protocol(threat: str, protocols: Path) -> str | Path:
    """A protocol of ``protocols.yaml``: a threat card id, or a card file relative to that file's folder."""
    path = protocols.parent / threat
    return path if threat.endswith((".yaml", ".yml")) and path.is_file() else threat


def claimed_entry(claimed: str | Path) -> Entry:
    """The claim as a self-reported entry: a leaderboard entry file, or a complete run of this suite made
    elsewhere (its folder ``<results>/runs/<run_id>``, or the ``run.json`` / ``summary.json`` in it)."""
    from bench.store import Store
    from bench.summary import read_summary

    path = Path(claimed).expanduser()
    if path.name in ("run.json", "summary.json"):
        path = path.parent
    if (path / "run.json").is_file():
        summary = read_summary(Store(path.parent.parent), path.name)
        if summary is None:
            raise BenchError(f"the claimed run {path} is incomplete (it has no summary.json)",
                             "finish the run (rerun its command) and claim it again")
        if summary["spec"]["model"]["card"] is None:
            raise BenchError(f"the claimed run {path} evaluated a bare module, not a card",
                             "run the model from its card (bench run --model CARD) and claim that run")
        return entry_from_run(Store(path.parent.parent), summary, provenance="self-reported")
    if path.suffix == ".json" and path.is_file():
        return read_entry(path).model_copy(update={"provenance": "self-reported"})
    raise BenchError(f"claim {claimed} is neither a leaderboard entry (.json) nor a run folder",
                     "pass an entry file, or the folder <results>/runs/<run_id> of a complete run")


def submit_claim(card: str | Path | ModelCard, claimed: str | Path, *, out: str | Path = "leaderboard",
                 fraction: float = 0.1, seed: int = 0, device: str | None = "auto",
                 results: str | Path | None = None, trust_code: tuple[str, ...] = ()) -> tuple[SpotCheck, Path | None]:
    """Spot-check a claim of the card's model and, if it holds, write it as a self-reported entry."""
    if not 0 < fraction <= 1:
        raise BenchError(f"the spot-check fraction must be in (0, 1], got {fraction}", "pass e.g. --spot 0.1")
    card = check_card(card, trust_code)
    entry = claimed_entry(claimed)
    check = spot_check(card, entry, str(claimed), fraction=fraction, seed=seed, device=device, results=results,
                       trust_code=trust_code)
    if not check.accepted:
        return check, None
    publish_card(card, Path(out))
    return check, save_entry(entry, Path(out))
