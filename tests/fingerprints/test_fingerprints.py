"""A forgotten revision bump fails here, naming the family: every threat family's outputs on its fingerprint card
(``cards/``, on tiny models with committed weights) must equal the recorded ones (``<family>.json``) unless its
implementation identity changed, in which case the fingerprint is recorded again (``update.py``)."""
from __future__ import annotations

import pytest
from fingerprint import FOLDER, VARIANTS, compare, compute, elsewhere, expected, family_of, platform_signature, read

from bench.implementation import differences
from bench.threats import THREAT_FAMILIES


def _where(family: str) -> str:
    if family in VARIANTS:
        return VARIANTS[family]
    cls = THREAT_FAMILIES.get(family)
    return f"{cls.__module__}.{cls.__qualname__}.revision"


@pytest.mark.parametrize("family", THREAT_FAMILIES.names() + sorted(VARIANTS))
def test_outputs_change_only_with_a_revision_bump(family, tmp_path):
    recorded = read(family)
    assert recorded is not None and (FOLDER / "cards" / f"{family}.yaml").is_file(), (
        f"family {family} has no fingerprint: add tests/fingerprints/cards/{family}.yaml (a cheap card) and run "
        f"`python tests/fingerprints/update.py {family}`")
    current = compute(family, tmp_path)
    changed = differences(recorded["implementation"], current["implementation"], ("recorded", "now"))
    if changed:
        pytest.fail(f"family {family}: its implementation identity changed ({'; '.join(changed)}): record its new "
                    f"fingerprint with `python tests/fingerprints/update.py {family}`")
    problems = compare(expected(recorded), current)
    assert not problems, (
        f"family {family}: its outputs changed ({'; '.join(problems)}) but its revision is still "
        f"{_revision(current['implementation']['family'], family)}: bump {_where(family)} (an ensemble's members' "
        "revisions are part of its identity: where only a member's code changed, bump that member's family; if "
        "every family changed, bump bench.implementation.CORE_REVISION, or the task's revision if its clean pass "
        f"changed), then run `python tests/fingerprints/update.py {family}`."
        + elsewhere(recorded, f"python tests/fingerprints/update.py --platform {family}"))


def test_a_changed_step_size_is_caught_and_named(tmp_path, monkeypatch):
    """What the test above reports when someone changes PGD's step without bumping its revision."""
    from bench.threats.pgd import PGDParams

    recorded = read("pgd")
    assert compare(recorded, compute("pgd", tmp_path / "same")) == []
    alpha = PGDParams.alpha.fget
    monkeypatch.setattr(PGDParams, "alpha", property(lambda self: alpha(self) * 1.01))
    problems = compare(recorded, compute("pgd", tmp_path / "changed"))
    assert any("sees other inputs than recorded" in p for p in problems)
    assert _where("pgd") == "bench.threats.pgd.PGD.revision"


def test_a_changed_draw_is_caught_even_where_no_stored_row_moves(tmp_path, monkeypatch):
    """The trace of model calls sees a change that leaves every stored prediction as it was."""
    import bench.ops.pgd as ops

    recorded = read("pgd")
    real = ops.random_delta
    monkeypatch.setattr(ops, "random_delta", lambda x, norm, eps, gen: real(x, norm, eps * 0.999, gen))
    current = compute("pgd", tmp_path)
    assert compare(recorded, current) != []


def _revision(identity: dict, key: str) -> int:
    """The revision that guards a fingerprint: the family's, or the engine's for an engine variant."""
    return identity["engine"]["revision"] if "@" in key and "engine" in identity else identity["revision"]


def test_every_variant_names_a_card_of_its_family():
    from bench.threats import load_threat_card

    for key in VARIANTS:
        assert load_threat_card(FOLDER / "cards" / f"{key}.yaml").family == family_of(key)


def test_a_machine_compares_with_its_own_recording_where_it_has_one():
    here = platform_signature()
    recorded = {"platform": "elsewhere", "rows": {"a": [1.0]}, "calls": [], "platforms": {
        here: {"rows": {"a": [1.0000001]}, "calls": []}, "third": {"rows": {"a": [2.0]}, "calls": []}}}
    assert expected(recorded)["rows"] == {"a": [1.0000001]}
    assert expected({**recorded, "platform": here})["rows"] == {"a": [1.0]}  # the machine that recorded it
    del recorded["platforms"][here]
    assert expected(recorded)["rows"] == {"a": [1.0]}  # no recording of its own: the main one
