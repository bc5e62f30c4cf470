"""The leaderboard site (``bench leaderboard site``): a page per dataset and family and per model, ranked as the
board ranks, marks, escaping of hostile entries, clear errors, plots only where the entries hold data, the same
bytes from the same entries; and the whole thing on entries of every shipped threat family."""
from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError
from bench.leaderboard.entries import Entry, read_entry, save_entry
from bench.leaderboard.plots import Axis, Point, Series, chart, heatmap
from bench.leaderboard.site import build_site

COMMITTED = Path(__file__).resolve().parents[1] / "leaderboard"
AUTOATTACK = COMMITTED / "entries/mnist/mnist-cnn-pgd-at--0d08c5aa96d8--9b307cdb82c2.json"


class Tables(HTMLParser):
    """Each table of a page: the id of the section it is in, and its rows as lists of cell texts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._section, self._row, self._cell = "", None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._section = dict(attrs).get("id") or self._section
        elif tag == "table":
            self.tables.append((self._section, []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def ranked(page: Path) -> list[list[str]]:
    """The model column of every table on a family page, top to bottom."""
    return [[row[1] for row in rows[1:]] for _, rows in Tables(page.read_text()).tables]


def variant(base: Entry, model_id: str, value: float | None = None, **update) -> Entry:
    """The entry of another model (its hash from its id), its headline ``value`` if given."""
    model = base.model.model_copy(update={"id": model_id, "hash": hashlib.sha256(model_id.encode()).hexdigest()})
    metrics = dict(base.metrics)
    if value is not None:
        metrics[base.headline] = metrics[base.headline].model_copy(
            update={"value": value, "low": max(value - 0.02, 0), "high": min(value + 0.02, 1)})
    return base.model_copy(update={"model": model, "metrics": metrics, **update})


def protocol_variant(base: Entry, **params) -> Entry:
    """The entry under another protocol of the same family (other params)."""
    card = {**base.protocol.card, "id": f"{base.protocol.id}-{json.dumps(params, sort_keys=True)}",
            "params": {**base.protocol.card["params"], **params}}
    protocol = base.protocol.model_copy(update={"id": card["id"], "card": card,
                                                "hash": hashlib.sha256(json.dumps(card).encode()).hexdigest()})
    return base.model_copy(update={"protocol": protocol})


def site_of(tmp_path: Path, entries: list[Entry], cards: Path | None = None) -> Path:
    for entry in entries:
        save_entry(entry, tmp_path / "lb")
    build_site(tmp_path / "lb", tmp_path / "site", cards)
    return tmp_path / "site"


@pytest.fixture(scope="module")
def base() -> Entry:
    return read_entry(AUTOATTACK)


def test_ranked_by_the_headline_in_its_direction_with_intervals(tmp_path, base):
    entries = [variant(base, "middle", 0.5), variant(base, "best", 0.9), variant(base, "worst", 0.1)]
    page = site_of(tmp_path / "higher", entries) / "mnist--autoattack.html"
    assert ranked(page) == [["best", "middle", "worst"]]
    rows = Tables(page.read_text()).tables[0][1]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[0][2] == "robust accuracy (%)" and rows[1][2] == "90.00 [88.0, 92.0]"
    assert "ranked by robust accuracy, higher is better; 95% Wilson intervals" in page.read_text()

    entries = [e.model_copy(update={"metrics": {**e.metrics, "robust_acc": e.metrics["robust_acc"].model_copy(
        update={"higher_is_better": False})}}) for e in entries]
    page = site_of(tmp_path / "lower", entries) / "mnist--autoattack.html"
    assert ranked(page) == [["worst", "middle", "best"]]
    assert "lower is better" in page.read_text()


def test_stale_and_unknown_code_are_marked_and_ranked_last(tmp_path, base):
    old = {**base.implementation, "family": {**base.implementation["family"], "revision": 99}}
    ghost_card = {**base.protocol.card, "family": "no-such-family"}
    ghost = base.protocol.model_copy(update={"family": "no-such-family", "card": ghost_card})
    site = site_of(tmp_path, [variant(base, "current", 0.5), variant(base, "old", 0.9, implementation=old),
                              variant(base, "ghost", 0.9, protocol=ghost)])
    page = (site / "mnist--autoattack.html").read_text()
    assert ranked(site / "mnist--autoattack.html") == [["current", "old"]]
    assert 'class="stale"' in page and 'flag-stale" title="stale: made by other code (family.revision: 99 in' in page
    ghost_page = (site / "mnist--no-such-family.html").read_text()
    assert 'flag-unknown" title="code unknown here (family no-such-family does not load)' in ghost_page


def test_provenance_and_non_adaptive_families_are_marked_with_a_legend(tmp_path, base):
    imported = variant(base, "from-robustbench", 0.7, provenance="imported", implementation={}, n=None, seed=None,
                       batch_size=None, points=None)
    transfer_card = {**base.protocol.card, "family": "pgd-transfer"}
    transfer = variant(base, "transferred", 0.6, protocol=base.protocol.model_copy(
        update={"family": "pgd-transfer", "card": transfer_card, "hash": "f" * 64}))
    site = site_of(tmp_path, [variant(base, "ours", 0.5), imported, transfer])
    page = (site / "mnist--autoattack.html").read_text()
    rows = Tables(page).tables[0][1]
    assert [(r[1], r[-3], r[-1]) for r in rows[1:]] == [("from-robustbench", "imported", ""),  # not stale: not ours
                                                     ("ours", "verified", "")]
    assert "prov prov-imported" in page and "Legend" in page and "copied from RobustBench" in page
    transfer_page = (site / "mnist--pgd-transfer.html").read_text()
    assert re.search(r"<h1>mnist: pgd-transfer <span class=\"flag flag-non-adaptive\">", transfer_page)
    assert "non-adaptive" not in re.search(r"<h1>.*</h1>", page).group(0)
    index = (site / "index.html").read_text()
    assert re.search(r'href="mnist--pgd-transfer.html">pgd-transfer</a> <span class="flag flag-non-adaptive"', index)


def test_hostile_strings_in_entries_render_inert(tmp_path, base):
    evil = "<script>alert(1)</script>"
    card = {**base.model.card, "description": '<img src=x onerror="alert(2)">'}
    hostile = variant(base, evil, 0.5)
    hostile = hostile.model_copy(update={"model": hostile.model.model_copy(
        update={"card": card, "paper": "javascript:alert(3)", "license": "</code><b>MIT</b>"}),
        "dataset": base.dataset.model_copy(update={"name": "<i>mnist</i>"})})
    huge = variant(base, "huge", 1e308)
    huge = huge.model_copy(update={"metrics": {**huge.metrics, "robust_acc": huge.metrics["robust_acc"].model_copy(
        update={"low": -1e308, "high": float("nan")})}})
    site = site_of(tmp_path, [hostile, variant(base, "plain", 0.4), huge])
    pages = {p.name: p.read_text() for p in site.glob("*.html")}
    assert len(pages) == 3 + 3  # index, the two family pages (two datasets), the pages of the three models
    assert ranked(site / "mnist--autoattack.html") == [["huge", "plain"]]
    assert not re.search(r'="[^"]*\bnan\b', pages["index.html"])  # no number that is not one in the plot
    for name, html in pages.items():
        assert html.count("<script") == 1, name  # the site's own script tag only
        assert "<img" not in html and "<b>" not in html and "<i>" not in html and 'href="javascript' not in html, name
    model_page = next(html for name, html in pages.items() if name.startswith("model--_script_"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in model_page
    assert "<code>javascript:alert(3)</code>" in model_page  # shown, not a link
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["index.html"]  # in the table and the plot's tooltips


def test_a_bad_or_duplicated_entry_is_an_error_naming_the_file(tmp_path, base):
    save_entry(base, tmp_path / "lb")
    bad = tmp_path / "lb/entries/mnist/broken.json"
    bad.write_text('{"schema_version": 1, "model": "<script>"}')
    with pytest.raises(BenchError, match="broken.json"):
        build_site(tmp_path / "lb", tmp_path / "site")
    r = CliRunner().invoke(app, ["leaderboard", "site", "--out", str(tmp_path / "site"),
                                 "--entries", str(tmp_path / "lb")])
    assert r.exit_code == 2 and "broken.json" in r.output and "Traceback" not in r.output
    bad.write_text(base.model_dump_json())  # the same model, protocol and dataset twice
    with pytest.raises(BenchError, match="broken.json and .*two entries of model mnist-cnn-pgd-at"):
        build_site(tmp_path / "lb", tmp_path / "site")
    quantile = json.loads(base.model_dump_json())
    quantile["metrics"]["robust_acc"]["agg"] = "quantile"  # with no q
    bad.write_text(json.dumps(quantile))
    with pytest.raises(BenchError,
                       match=r"broken.json is not a valid entry.*give q in \[0, 1\] exactly for a quantile"):
        build_site(tmp_path / "lb", tmp_path / "site")
    points = json.loads(base.model_dump_json())
    points["model"]["hash"], points["points"]["index"] = "0" * 64, "AAA="  # 2 bytes: not int64s
    bad.write_text(json.dumps(points))
    with pytest.raises(BenchError, match="broken.json is not a valid entry.*the points do not decode"):
        build_site(tmp_path / "lb", tmp_path / "site")
    with pytest.raises(BenchError, match="no leaderboard entries under"):
        build_site(tmp_path / "nowhere", tmp_path / "site")


def svg_titles(page: Path) -> list[str]:
    return re.findall(r'<svg class="plot"[^>]*><title>([^<]*)</title>', page.read_text())


def test_the_committed_entries_give_the_plots_their_data_allow(tmp_path):
    site = tmp_path / "site"
    r = CliRunner().invoke(app, ["leaderboard", "site", "--out", str(site), "--entries", str(COMMITTED)])
    assert r.exit_code == 0, r.output
    assert svg_titles(site / "index.html") == ["mnist: clean against robust accuracy"]
    assert svg_titles(site / "mnist--autoattack.html") == []  # one eps: no curve
    # MNIST-C has one severity per corruption: its acc_<corruption> metrics are the cells of the heat map
    pgd_at = site / "model--mnist-cnn-pgd-at--0d08c5aa96d8.html"
    assert svg_titles(pgd_at) == ["mnist-cnn-pgd-at, corruptions-mnist: accuracy per group and level"]
    assert "fog, 5: 49.8%" in pgd_at.read_text()  # the plot's text fallback


def test_an_eps_curve_needs_two_eps_and_a_beta_curve_two_betas(tmp_path, base):
    small = protocol_variant(base, eps=0.1)
    one = site_of(tmp_path / "one", [base, variant(base, "other", 0.2)])
    assert svg_titles(one / "mnist--autoattack.html") == []
    two = site_of(tmp_path / "two", [base, variant(base, "other", 0.2), small, variant(small, "other", 0.6)])
    [title] = svg_titles(two / "mnist--autoattack.html")
    assert title == "autoattack: robust accuracy against eps (norm Linf, version standard)"
    assert len(Tables((two / "mnist--autoattack.html").read_text()).tables) == 2  # a table per protocol

    margin = read_entry(sorted((COMMITTED / "entries/mnist").glob("*--750998a0f23f.json"))[0])  # made generative

    def vae(name: str, beta: float | None, value: float) -> Entry:
        card = {**margin.model.card, "task": "generative"}
        if beta is not None:
            card["recipe"] = {"name": "vae", "seed": 0, "params": {"objective": "elbo", "beta": beta}}
        entry = variant(margin, name, value)
        return entry.model_copy(update={"model": entry.model.model_copy(update={"card": card})})

    flat = site_of(tmp_path / "flat", [vae("vae-a", None, 0.5), vae("vae-b", 1, 0.4)])
    assert svg_titles(flat / "mnist--corruptions.html") == []
    betas = site_of(tmp_path / "betas", [vae("vae-a", 4, 0.5), vae("vae-b", 1, 0.4), vae("vae-c", 8, 0.6)])
    assert svg_titles(betas / "mnist--corruptions.html") == [
        "corruptions-mnist: mean corruption accuracy against the training beta"]


def test_a_plot_is_titled_labelled_described_and_never_empty():
    assert chart("t", Axis("x"), Axis("y"), []) is None
    assert chart("t", Axis("x"), Axis("y"), [Series("nothing", ())]) is None
    assert heatmap("t", "group", "level", ["a"], ["1"], {}) is None
    assert heatmap("t", "group", "level", ["a"], ["1"], {("a", "1"): 7.0}) is None  # not an accuracy
    svg = chart("clean <vs> robust", Axis("clean accuracy", percent=True), Axis("robust"),
                [Series("m & n", (Point(0.9, 0.5, 0.4, 0.6, "a"), Point(0.8, 0.2)))])
    assert svg.startswith('<svg class="plot"') and "<title>clean &lt;vs&gt; robust</title><desc>" in svg
    assert ">clean accuracy</text>" in svg and ">robust</text>" in svg and "m &amp; n" in svg
    assert "m &amp; n: a 90% -&gt; 0.5" in svg  # the text fallback holds the data
    assert 'class="error-bar"' in svg


@pytest.mark.slow
def test_every_shipped_family_gets_its_page_marks_and_plots(all_families_site):
    from bench.threats import THREAT_FAMILIES
    from bench.threats.base import family_class

    entries = [read_entry(p) for p in sorted(all_families_site.entries.rglob("*.json"))]
    assert {e.protocol.family for e in entries} == set(THREAT_FAMILIES.names())
    site = all_families_site.site
    index = (site / "index.html").read_text()
    for e in entries:
        page = site / f"{e.dataset.name}--{e.protocol.family}.html"
        assert page.is_file() and f'href="{page.name}"' in index
        assert e.model.id in ranked(page)[0]
        html = page.read_text()
        assert ("flag-non-adaptive" in re.search(r"<h1>.*</h1>", html).group(0)) == (
            not family_class(e.protocol.family).adaptive)
    assert not any(re.search(r'flag-(stale|unknown)" title=', p.read_text()) for p in site.glob("*.html"))
    assert len(list(site.glob("model--*.html"))) == len({e.model.hash for e in entries})
    plotted = {p.name: svg_titles(p) for p in site.glob("*.html") if svg_titles(p)}
    assert sorted(plotted) == ["digits--vae-lipschitz-margin.html", "digits--vae-margin.html", "index.html",
                               "model--fingerprint-digits-cnn--08f5f0e1c61e.html"]
    # corruptions at two severities: every cell from its per-point column, as the shift grid
    model_page = "model--fingerprint-digits-cnn--08f5f0e1c61e.html"
    assert plotted[model_page] == ["fingerprint-digits-cnn, fingerprint-corruptions: accuracy per group and level",
                                   "fingerprint-digits-cnn, fingerprint-ood: accuracy per group and level"]
    corrupted = next(e for e in entries if e.protocol.family == "corruptions").points.frame()
    text = (site / model_page).read_text()
    for column in ("correct_gaussian_noise_1", "correct_fog_3"):
        group, level = column.removeprefix("correct_").rsplit("_", 1)
        assert f"{group}, {level}: {100 * corrupted[column].mean():.1f}%" in text
    assert plotted["digits--vae-lipschitz-margin.html"] == [
        "fingerprint-vae-lipschitz-margin: share of points whose certified margin is at least r"]


@pytest.mark.slow
def test_the_same_entries_give_the_same_bytes(all_families_site, tmp_path):
    build_site(all_families_site.entries, tmp_path, Path(__file__).parent / "fingerprints" / "cards")
    again = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    first = {p.relative_to(all_families_site.site): p.read_bytes()
             for p in all_families_site.site.rglob("*") if p.is_file()}
    assert again == first


def test_a_protocol_is_shown_by_what_it_asks_not_by_the_engine_that_answers():
    """AutoAttack's engine and precision are implementation, not protocol: a page neither titles nor groups by
    them; params of a family this code does not know are shown whole."""
    from bench.leaderboard.marks import asked

    card = {"norm": "Linf", "eps": 0.3, "version": "standard", "engine": "bench", "precision": "bf16"}
    assert asked("autoattack", card) == {"norm": "Linf", "eps": 0.3, "version": "standard"}
    assert asked("no-such-family", card) == card
    assert asked("autoattack", {"norm": "L7"}) == {"norm": "L7"}  # unreadable: shown as written
