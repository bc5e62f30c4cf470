"""Plots of the leaderboard site as inline SVG, drawn here in Python: a static page needs no plotting script,
works offline and from ``file://``, and the same data give the same bytes. Every plot has a title, axis
labels, and a ``<title>``/``<desc>`` pair that says what it shows in words (what a screen reader, or a
browser without SVG, gets). Text that comes from entries is escaped; numbers are written with fixed
precision."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 190, 48, 52  # margins: the title (two lines at most) above, the legend right
TITLE_CHARS = 80
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")
SHAPES = ("circle", "square", "triangle")
LEGEND_CHARS = 26
LEGEND_ROWS = 16  # series named in the legend (the description names them all)
LIMIT = 1e15  # a coordinate beyond it is no leaderboard number (and would overflow the axis arithmetic)


@dataclass(frozen=True)
class Axis:
    label: str
    percent: bool = False  # values in [0, 1] shown in %

    def text(self, value: float) -> str:
        return f"{100 * value:.4g}%" if self.percent else f"{value:.4g}"

    def ticks(self, low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
        """Round values covering [low, high], each with its label (as many decimals as the step needs)."""
        scale = 100 if self.percent else 1
        raw = (high - low) / count
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        decimals = max(0, -math.floor(math.log10(step * scale)))
        if abs(step * scale * 10 ** decimals - round(step * scale * 10 ** decimals)) > 1e-6:
            decimals += 1  # a step of 2.5
        values = [round(k * step, 12) for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]
        return [(v, f"{v * scale:.{decimals}f}{'%' if self.percent else ''}") for v in values]


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    low: float | None = None  # the y interval, drawn as an error bar
    high: float | None = None
    label: str = ""  # what the point is (its tooltip)


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[Point, ...]


def _extent(values: list[float], percent: bool) -> tuple[float, float]:
    """The axis range: the data with a margin (kept within [0, 1] for percentages that are), never empty."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.1, 0.05 if percent else 0.5)
    if percent and 0 <= low and high <= 1:
        return max(low - pad, 0.0), min(high + pad, 1.0)
    return low - pad, high + pad


def _num(value: float) -> str:
    return f"{value:.1f}"


def _marker(shape: str, x: float, y: float, colour: str, tip: str) -> str:
    tip = f"<title>{escape(tip)}</title>"
    if shape == "square":
        return f'<rect x="{_num(x - 4)}" y="{_num(y - 4)}" width="8" height="8" fill="{colour}">{tip}</rect>'
    if shape == "triangle":
        return (f'<polygon points="{_num(x)},{_num(y - 5)} {_num(x - 5)},{_num(y + 4)} {_num(x + 5)},{_num(y + 4)}" '
                f'fill="{colour}">{tip}</polygon>')
    return f'<circle cx="{_num(x)}" cy="{_num(y)}" r="4.5" fill="{colour}">{tip}</circle>'


def _frame(title: str, desc: str, body: list[str], height: int = HEIGHT) -> Markup:
    """The SVG: its title (shown on at most two lines, whole in ``<title>``), description and body."""
    lines = textwrap.wrap(title, TITLE_CHARS, max_lines=2, placeholder="\u2026") or [""]
    shown = "".join(f'<tspan x="{WIDTH / 2:.0f}" y="{16 + 16 * k}">{escape(line)}</tspan>'
                    for k, line in enumerate(lines))
    return Markup(f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
                  f'role="img"><title>{escape(title)}</title><desc>{escape(desc)}</desc>'
                  f'<text class="plot-title" text-anchor="middle">{shown}</text>' + "".join(body) + "</svg>")


def _short(name: str) -> str:
    return name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "\u2026"


def chart(title: str, x: Axis, y: Axis, series: list[Series], *, lines: bool = False, step: bool = False,
          diagonal: bool = False) -> Markup | None:
    """Points per series (joined by lines, or steps, if asked), with error bars where a point has an interval,
    a legend, and the y = x line if ``diagonal``; None when there is nothing to draw. Points with a coordinate
    that is not a number, or beyond ``LIMIT``, are left out."""
    series = [Series(s.name, tuple(p for p in s.points if all(abs(v) <= LIMIT for v in (p.x, p.y, p.low, p.high)
                                                             if v is not None))) for s in series]
    series = [s for s in series if s.points]
    if not series:
        return None
    xs = [p.x for s in series for p in s.points]
    ys = [v for s in series for p in s.points for v in (p.y, p.low, p.high) if v is not None]
    (x0, x1), (y0, y1) = _extent(xs, x.percent), _extent(ys, y.percent)
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def px(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0) * (right - LEFT)

    def py(v: float) -> float:
        return bottom - (v - y0) / (y1 - y0) * (bottom - TOP)

    body = [f'<rect class="plot-area" x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}"/>']
    for t, text in x.ticks(x0, x1):
        body.append(f'<line class="grid" x1="{_num(px(t))}" y1="{TOP}" x2="{_num(px(t))}" y2="{bottom}"/>'
                    f'<text class="tick" x="{_num(px(t))}" y="{bottom + 16}" text-anchor="middle">{text}</text>')
    for t, text in y.ticks(y0, y1):
        body.append(f'<line class="grid" x1="{LEFT}" y1="{_num(py(t))}" x2="{right}" y2="{_num(py(t))}"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{_num(py(t) + 4)}" text-anchor="end">{text}</text>')
    body.append(f'<text class="axis-label" x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 12}" '
                f'text-anchor="middle">{escape(x.label)}</text>'
                f'<text class="axis-label" transform="translate(16 {(TOP + bottom) / 2:.0f}) rotate(-90)" '
                f'text-anchor="middle">{escape(y.label)}</text>')
    if diagonal:
        low, high = max(x0, y0), min(x1, y1)
        if low < high:
            body.append(f'<line class="diagonal" x1="{_num(px(low))}" y1="{_num(py(low))}" x2="{_num(px(high))}" '
                        f'y2="{_num(py(high))}"><title>y = x</title></line>')
    described = []
    for i, s in enumerate(series):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[i // len(COLOURS) % len(SHAPES)]
        points = sorted(s.points, key=lambda p: (p.x, p.y)) if lines or step else list(s.points)
        if (lines or step) and len(points) > 1:
            path, previous = [], None
            for p in points:
                if step and previous is not None:
                    path.append(f"{_num(px(p.x))},{_num(py(previous))}")
                path.append(f"{_num(px(p.x))},{_num(py(p.y))}")
                previous = p.y
            body.append(f'<polyline class="series-line" points="{" ".join(path)}" stroke="{colour}"/>')
        for p in points:
            if p.low is not None and p.high is not None:
                body.append(f'<line class="error-bar" x1="{_num(px(p.x))}" y1="{_num(py(p.low))}" '
                            f'x2="{_num(px(p.x))}" y2="{_num(py(p.high))}" stroke="{colour}"/>')
            if not step:
                tip = f"{s.name}{': ' + p.label if p.label else ''} ({x.label} {x.text(p.x)}, {y.label} {y.text(p.y)})"
                body.append(_marker(shape, px(p.x), py(p.y), colour, tip))
        legend_y = TOP + 8 + 18 * i
        if i < LEGEND_ROWS:
            body.append(_marker(shape, right + 16, legend_y, colour, s.name) +
                        f'<text class="legend" x="{right + 26}" y="{legend_y + 4}">{escape(_short(s.name))}</text>')
        elif i == LEGEND_ROWS:
            body.append(f'<text class="legend" x="{right + 10}" y="{legend_y + 4}">and {len(series) - i} more: see '
                        'the tooltips</text>')
        described.append(f"{s.name}: " + "; ".join(
            f"{p.label + ' ' if p.label else ''}{x.text(p.x)} -> {y.text(p.y)}" for p in points))
    desc = f"{y.label} against {x.label}. " + ". ".join(described)
    return _frame(title, desc, body)


def heatmap(title: str, row_label: str, column_label: str, rows: list[str], columns: list[str],
            accuracies: dict[tuple[str, str], float]) -> Markup | None:
    """One coloured cell per known (row, column) accuracy, its percentage written in it; None when none is
    known (a value outside [0, 1] is no accuracy). The colour runs from light (lowest) to dark blue (highest)."""
    accuracies = {cell: v for cell, v in accuracies.items() if 0 <= v <= 1}
    if not accuracies:
        return None
    low, high = min(accuracies.values()), max(accuracies.values())
    label_width, cell_h = 130, 22
    cell_w = min(80, (WIDTH - label_width - 20) / len(columns))
    top = TOP + 34  # the first row of cells, under the column label and names
    height = top + cell_h * len(rows) + 40
    body = []
    for j, column in enumerate(columns):
        body.append(f'<text class="tick" x="{_num(label_width + cell_w * (j + 0.5))}" y="{top - 6}" '
                    f'text-anchor="middle">{escape(column)}</text>')
    for i, row in enumerate(rows):
        y = top + cell_h * i
        body.append(f'<text class="tick" x="{label_width - 6}" y="{_num(y + cell_h / 2 + 4)}" '
                    f'text-anchor="end">{escape(_short(row))}</text>')
        for j, column in enumerate(columns):
            value = accuracies.get((row, column))
            if value is None:
                continue
            share = (value - low) / (high - low) if high > low else 1.0
            text = f"{100 * value:.1f}"
            body.append(f'<rect x="{_num(label_width + cell_w * j)}" y="{y}" width="{_num(cell_w - 2)}" '
                        f'height="{cell_h - 2}" fill="{_blue(share)}"><title>{escape(row)}, {escape(column)}: '
                        f'{text}</title></rect><text class="{"cell dark" if share > 0.55 else "cell"}" '
                        f'x="{_num(label_width + cell_w * (j + 0.5) - 1)}" y="{y + cell_h / 2 + 3}" '
                        f'text-anchor="middle">{text}</text>')
    body.append(f'<text class="axis-label" x="{_num(label_width + cell_w * len(columns) / 2)}" y="{TOP + 6}" '
                f'text-anchor="middle">{escape(column_label)}</text><text class="axis-label" '
                f'transform="translate(16 {top + cell_h * len(rows) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                f'{escape(row_label)}</text>')
    body.append(f'<text class="legend" x="{label_width}" y="{height - 14}">colour: '
                f'accuracy, light {100 * low:.1f}% to dark {100 * high:.1f}%; empty: not in the entry</text>')
    desc = "; ".join(f"{r}, {c}: {100 * v:.1f}%" for (r, c), v in sorted(accuracies.items()))
    return _frame(title, desc, body, height)


def _blue(share: float) -> str:
    """A light-to-dark blue for a share in [0, 1]."""
    light, dark = (239, 246, 255), (8, 69, 148)
    return "#" + "".join(f"{round(a + (b - a) * share):02x}" for a, b in zip(light, dark))
