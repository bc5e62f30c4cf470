"""Weights the suite ships for cards that train on first use, so a README command gives its first number in
minutes: ``models/prebuilt/`` holds what ``bench train`` wrote into the cache for a card (the safetensors
file and its training record, named by the card's training hash). A prebuilt file is used only for the very
training hash it was trained under, and only when its sha256 equals the one in its committed record; it is
copied into the cache, so runs, specs and ``bench train``'s comparison see an ordinary trained card.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from bench.cards import builtin_root
from bench.digests import sha256_file
from bench.errors import WeightsError
from bench.files import atomic_write, safe_filename

if TYPE_CHECKING:
    from bench.models.card import ModelCard

__all__ = ["install_prebuilt", "prebuilt_path", "prebuilt_record", "shipped_for"]


def prebuilt_dir() -> Path:
    return builtin_root() / "models" / "prebuilt"


def shipped_for(card_id: str) -> bool:
    """Whether the suite ships prebuilt weights under this card id (for some training hash): what a listing can
    say without validating the recipe; a run checks the exact training hash (``prebuilt_path``)."""
    return any(prebuilt_dir().glob(f"{safe_filename(card_id)}-" + "[0-9a-f]" * 16 + ".safetensors"))


def prebuilt_path(card: ModelCard) -> Path | None:
    """The shipped weight file trained under this card's training hash, if the suite ships one."""
    from bench.models.assemble import trained_path

    path = prebuilt_dir() / trained_path(card).name
    return path if path.is_file() and path.with_suffix(".json").is_file() else None


def prebuilt_record(card: ModelCard) -> dict | None:
    """The training record shipped beside the prebuilt weights (sha256, device, threads, history)."""
    path = prebuilt_path(card)
    if path is None:
        return None
    record = json.loads(path.with_suffix(".json").read_text())
    if record.get("training_hash") != card.training_hash:
        raise WeightsError(f"prebuilt weights {path.name} were recorded for another training hash",
                           "the shipped record is damaged: restore it, or delete both files to train instead")
    return record


def install_prebuilt(card: ModelCard, target: Path) -> bool:
    """Copy the card's prebuilt weights to ``target`` (its cache path) after checking their sha256; False when
    the suite ships none for this training hash."""
    record = prebuilt_record(card)
    if record is None:
        return False
    source = prebuilt_path(card)
    if sha256_file(source) != record["sha256"]:
        raise WeightsError(f"prebuilt weights {source} do not match the sha256 of their record",
                           "the file is damaged: restore it from the repository, or delete it and its .json to "
                           f"train instead (`bench train {card.id}`)")
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    if sha256_file(target) != record["sha256"]:  # the copy itself, not only its source
        target.unlink()
        raise WeightsError(f"copying prebuilt weights to {target} changed them", "check the cache's disk")
    target.with_suffix(".json").write_text(json.dumps(record | {"prebuilt": source.name}, indent=2))
    return True
