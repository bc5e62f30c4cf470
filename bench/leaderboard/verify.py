"""``bench leaderboard verify``: what a leaderboard repository runs on every pull request.

Each new or changed entry must parse under the schema, lie where its identity puts it, agree with its own
points, be made by the current code (a stale entry is refused, not recomputed), name a card that passes the
submission rules and hashes to the entry's model hash, and survive a spot check: a seeded random subset of its
shards recomputed here, point by point (``bench.leaderboard.spot``). Imported entries (RobustBench) hold no
points: only their schema and place are checked, and the report says so.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from pydantic import ValidationError

from bench.errors import BenchError
from bench.files import safe_filename
from bench.leaderboard.entries import Entry, read_entry
from bench.leaderboard.spot import SpotCheck, spot_check
from bench.models.card import ModelCard


def changed_entries(leaderboard: Path, since: str) -> list[Path]:
    """Entry files added, modified or renamed under ``leaderboard/entries`` since the git revision ``since``."""
    try:
        done = subprocess.run(["git", "-C", str(leaderboard), "diff", "--name-only", "--relative",
                               "--diff-filter=AMR", since, "--", "entries"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BenchError(f"git cannot list what changed in {leaderboard} since {since}: {err}",
                         "install git, or name the entries to verify") from err
    if done.returncode != 0:
        raise BenchError(f"git cannot list what changed in {leaderboard} since {since}: {done.stderr.strip()}",
                         "pass a revision of the leaderboard's repository (e.g. origin/main), or name the entries")
    return [leaderboard / line for line in done.stdout.splitlines() if line.endswith(".json")]


def all_entries(leaderboard: Path) -> list[Path]:
    return sorted((leaderboard / "entries").glob("**/*.json"))


def entry_card(entry: Entry, leaderboard: Path) -> ModelCard:
    """The entry's model card: the catalogue's card of that id, or the copy ``bench submit`` published under
    ``leaderboard/cards/`` (weight files beside it), whichever hashes to the entry's model hash."""
    from bench.leaderboard.submit import in_catalogue
    from bench.models.card import load_model_card

    if entry.model.card is not None:
        try:
            card = ModelCard.model_validate(entry.model.card)
        except ValidationError as err:
            raise BenchError(f"the entry's model card {entry.model.id} is not a valid card: "
                             f"{err.errors()[0]['msg']}", "regenerate the entry from a valid card") from err
        found = in_catalogue(card)
        if found is not None:
            return found
    published = leaderboard / "cards" / f"{safe_filename(entry.model.id)}--{entry.model.hash[:12]}" / "card.yaml"
    if not published.is_file():
        raise BenchError(f"the card of {entry.model.id} ({entry.model.hash[:12]}) is neither in the catalogue nor "
                         f"published at {published}", "submit it with `bench submit CARD --out LEADERBOARD`")
    return load_model_card(published)


def verify_entry(path: Path, leaderboard: Path, *, fraction: float = 0.1, seed: int = 0,
                 device: str | None = "auto", results: str | Path | None = None,
                 trust_code: tuple[str, ...] = ()) -> SpotCheck:
    """Every check of one entry file (problems are reported, never raised)."""
    from bench.leaderboard.submit import check_card

    try:
        entry = read_entry(path)
        place = leaderboard / entry.path
        if Path(path).resolve() != place.resolve():
            return SpotCheck(str(path), problems=[f"misplaced: its model, protocol and dataset put it at {place}"])
        if entry.provenance == "imported":
            return SpotCheck(str(path), notes=["imported: no points to recompute; schema and place checked"])
        card = check_card(entry_card(entry, leaderboard), trust_code)
        return spot_check(card, entry, str(path), fraction=fraction, seed=seed, device=device, results=results,
                          trust_code=trust_code)
    except BenchError as err:
        return SpotCheck(str(path), problems=[err.problem + (f" (fix: {err.fix})" if err.fix else "")])
