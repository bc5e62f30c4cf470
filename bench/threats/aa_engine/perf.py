"""``bench perf``: how fast AutoAttack engines run on one model and point set, and how close each stage comes to
its pass-count limit.

The limit of a stage is the time its model passes would take at the model's own measured speed: every call it
makes (forward only, or forward with an input gradient and its backward pass) costs the time per pass the model
sustains back to back at that many rows (measured at powers of two up to the largest call, interpolated between).
A ratio near 1 says the attack is as fast as its passes allow; what lies above is the attack's own work.

Every engine runs in a fresh process (spawned), on the same points, with the same thread count, and measures the
pass times there too, so its ratios are against the model's speed measured in the same run, and its peak memory
is its own (CUDA: peak allocated; CPU: the process's peak resident set). Each engine first runs on the first
``WARM_UP_POINTS`` points (the compiled one on all of them: each batch shape it meets is a compilation): the costs
paid once per process (imports, the engine's kernels loaded or compiled, the model's first passes at new shapes,
CUDA's set-up) land there, timed and shown apart, so the timed run is the steady cost per example, measured like
the limit, which is also taken from warm passes. A compiled engine's passes are counted at their padded rows (the
rows computed) against the plain model's time per pass, and its time includes the plain rerun of the first points
that checks it. Timed several times (``repeats``), an engine reports its median run, and the range of all: one
run's ratio moves by several percent with the machine's speed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bench.threats.aa_engine.model import frozen

ENGINES = ("bench", "bench-compiled", "official", "torchattacks-100", "torchattacks")
LABELS = {"bench": "bench engine", "bench-compiled": "bench engine, compiled (torch.compile, fixed-shape batches)",
          "official": "official AutoAttack (pyautoattack)",
          "torchattacks-100": "torchattacks AutoAttack, 100 iterations",
          "torchattacks": "torchattacks AutoAttack as shipped (10 iterations per gradient attack)"}
WARM_UP_POINTS = 2
COMPILE_MODE = {"cuda": "reduce-overhead", "cpu": "default"}  # bench-compiled's: CUDA graphs where there are some


class PassCounter(nn.Module):
    """Records every call of the model: when, how many rows, and whether it carried a gradient (a pass that a
    backward pass follows)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.events: list[tuple[float, int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self._record(x)
        return self.inner(x)

    def _record(self, x: Tensor) -> None:
        self.events.append((time.time(), len(x), torch.is_grad_enabled() and x.requires_grad))

    def untraced(self) -> "PassCounter":
        """Records every call even inside a compiled model, where a traced clock would be read once. Asked for only
        there: it imports dynamo, whose 160 MiB would count in every engine's peak memory."""
        self._record = torch.compiler.disable(self._record)
        return self

    def between(self, start: float, end: float) -> tuple[list[int], list[int]]:
        """The row counts of the forward calls and of the forward+backward calls made in [start, end)."""
        inside = [(rows, grad) for t, rows, grad in self.events if start <= t < end]
        return [r for r, g in inside if not g], [r for r, g in inside if g]


@dataclass
class Rates:
    """The time per pass at each batch size, sustained back to back: forward only, and forward with the input's
    gradient."""

    sizes: list[int]
    forward: list[float]
    backward: list[float]

    def time(self, rows: int, backward: bool) -> float:
        """A pass of ``rows`` rows, interpolated between the measured sizes (linear beyond the largest)."""
        times, sizes = (self.backward if backward else self.forward), self.sizes
        if not sizes:
            return math.nan
        k = next((i for i, size in enumerate(sizes) if size >= rows), len(sizes) - 1)
        if k == 0:
            return times[0]
        lo, hi = sizes[k - 1], sizes[k]
        return times[k - 1] + (times[k] - times[k - 1]) * (rows - lo) / (hi - lo)

    def throughput(self, backward: bool) -> float:
        return self.sizes[-1] / (self.backward if backward else self.forward)[-1] if self.sizes else math.nan


def pass_rates(model: nn.Module, x: Tensor, max_rows: int | None = None, repeats: int = 7,
               block_s: float = 0.1) -> Rates:
    """The model's time per pass at batch sizes 1, 2, 4, ... up to ``max_rows`` (by default ``len(x)``; rows
    beyond the points repeat them), with and without an input gradient (parameters frozen: the limit counts input
    gradients only, no attack needs the weights'). Each is the best of ``repeats`` blocks of back-to-back passes
    (as many as fill about ``block_s``, at most 100), divided by their count: the rate a loop of passes sustains,
    which is what an attack's stage runs. Seven blocks of 100 ms: on the 2-core CPU the limit of a whole run then
    moves by 3-4% between measurements, against 12% with three blocks of 50 ms, and is stricter (the best of more
    blocks). Sizes reach the largest call: batched runs call the model with more rows than there are points, and
    those calls are measured, not extrapolated from the point count."""
    def per_pass(fn, batch: Tensor) -> float:
        fn(batch)  # warm-up
        start = time.perf_counter()
        fn(batch)
        _sync(batch)
        count = max(1, min(100, int(block_s / max(time.perf_counter() - start, 1e-9))))
        out = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(count):
                fn(batch)
            _sync(batch)
            out = min(out, (time.perf_counter() - start) / count)
        return out

    def forward(batch: Tensor) -> None:
        with torch.no_grad():
            model(batch)

    def backward(batch: Tensor) -> None:
        probe = batch.detach().requires_grad_(True)
        torch.autograd.grad(model(probe).sum(), probe)

    top = max(max_rows or len(x), 1)
    sizes = sorted({2 ** k for k in range(top.bit_length()) if 2 ** k <= top} | {len(x), top})
    batches = {s: x[torch.arange(s, device=x.device) % len(x)] for s in sizes}
    with frozen(model):
        return Rates(sizes, [per_pass(forward, batches[s]) for s in sizes],
                     [per_pass(backward, batches[s]) for s in sizes])


def _sync(x: Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


@dataclass
class Stage:
    name: str
    seconds: float
    forward_calls: list[int]  # rows per call
    backward_calls: list[int]
    broken: int | None = None

    def limit(self, rates: Rates) -> float:
        return (sum(rates.time(r, False) for r in self.forward_calls)
                + sum(rates.time(r, True) for r in self.backward_calls))


@dataclass
class Measure:
    engine: str
    seconds: float
    robust: int
    n: int
    rates: Rates
    peak_bytes: int
    stages: list[Stage] = field(default_factory=list)
    error: str | None = None
    warm_up_s: float = math.nan  # the run on the first warm_up_points points before the timed one
    warm_up_points: int = WARM_UP_POINTS
    runs: list[float] = field(default_factory=list)  # every timed run's seconds (``seconds``: their median)
    differ: int = 0  # points robust in some timed runs but not in all (a seeded engine: none)

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds

    @property
    def limit(self) -> float:
        return sum(s.limit(self.rates) for s in self.stages)


def _spans(marks: list[tuple[str, float]], end: float) -> list[tuple[str, float, float]]:
    """Stage spans from (stage, start time) marks."""
    return [(name, t, marks[i + 1][1] if i + 1 < len(marks) else end) for i, (name, t) in enumerate(marks)]


def run_bench(model: PassCounter, x: Tensor, y: Tensor, norm: str, eps: float, version: str,
              attacks: list[str] | None, compile: str = "off", batch_size: int | None = None):
    """Our engine; compiled, the counter sees the padded calls (the rows computed) inside the compiled model, and
    the run includes the plain rerun of the first points that checks it."""
    from bench.threats.aa_engine.engine import autoattack

    result = autoattack(model, x, y, norm=norm, eps=eps, version=version, attacks=attacks, seed=0,
                        positions=torch.arange(len(x)), compile=compile, batch_size=batch_size)
    return [(name, *span, result.broken_by.get(name)) for name, span in result.spans.items()], result.robust


def run_official(model: PassCounter, x: Tensor, y: Tensor, norm: str, eps: float, version: str,
                 attacks: list[str] | None, batch_size: int | None = None):
    from pyautoattack import AutoAttack

    marks: list[tuple[str, float]] = []

    class Marks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("running "):
                marks.append((message.split()[1], record.created))

    logger = logging.getLogger("auto-attack")
    handler, level = Marks(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        aa = AutoAttack(model, eps=eps, norm=norm, seed=0, version=version, attacks=attacks, device=x.device)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size or len(x))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    end = time.time()
    with torch.no_grad():
        robust = model.inner(x_adv).argmax(1) == y
    return [(name, start, stop, None) for name, start, stop in _spans(marks, end)], robust


def run_torchattacks(model: PassCounter, x: Tensor, y: Tensor, norm: str, eps: float, version: str,
                     iterations: int | None):
    import torchattacks

    atk = torchattacks.AutoAttack(model, norm=norm, eps=eps, version=version, n_classes=_classes(model, x), seed=0)
    marks: list[tuple[str, float]] = []
    for attack in atk._autoattack.attacks:
        if iterations is not None and hasattr(attack, "steps"):
            attack.steps = iterations
        name = type(attack).__name__
        attack.forward = _marked(attack.forward, name, marks)
    x_adv = atk(x, y)
    end = time.time()
    with torch.no_grad():
        robust = model.inner(x_adv).argmax(1) == y
    return [(name, start, stop, None) for name, start, stop in _spans(marks, end)], robust


def _marked(forward, name: str, marks: list):
    def wrapped(*args, **kwargs):
        marks.append((name, time.time()))
        return forward(*args, **kwargs)
    return wrapped


def _classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return model.inner(x[:1]).shape[-1]


def measure(engine: str, model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float,
            version: str = "standard", attacks: list[str] | None = None, repeats: int = 1,
            batch_size: int | None = None) -> Measure:
    """One engine on ``x``, after its warm-up run: wall time, robust points, per stage its time and passes, the
    model's pass times. ``repeats`` timed runs: the median one is reported (the machine's speed moves between
    runs; the limit, from the best of several blocks of passes, does not move with it as much), the others' times
    kept beside it. ``attacks`` (version custom): only these stages; ``batch_size``: the points attacked at once
    (by default all); torchattacks has neither and refuses."""
    if attacks is not None and engine.startswith("torchattacks"):
        raise ValueError("torchattacks' AutoAttack runs whole versions only, not a list of attacks")
    if batch_size and batch_size < len(x) and engine.startswith("torchattacks"):
        raise ValueError("torchattacks' AutoAttack attacks all the points it is given at once: no batch size")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    model = model.eval()
    counter, mode = PassCounter(model), compile_mode(engine, x.device)
    if mode != "off":  # each batch shape the timed run meets is a compilation: all of them compiled in its warm-up
        counter.untraced()
    warm = len(x) if mode != "off" else min(WARM_UP_POINTS, len(x))
    start = time.time()
    _run(engine, counter, x[:warm], y[:warm], norm, eps, version, attacks, mode, batch_size)
    _sync(x)
    warm_up = time.time() - start
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
    runs, largest = [], len(x)
    for _ in range(repeats):
        counter.events.clear()  # the same counter (and so the same compiled graphs) for every timed run
        start = time.time()
        spans, robust = _run(engine, counter, x, y, norm, eps, version, attacks, mode, batch_size)
        _sync(x)
        seconds = time.time() - start
        largest = max([largest] + [rows for _, rows, _ in counter.events])
        runs.append((seconds, robust.cpu(), [Stage(name, stop - begin, *counter.between(begin, stop), broken)
                                             for name, begin, stop, broken in spans]))
    memory = peak(x.device)
    seconds, robust, stages = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]  # the median (lower)
    every = torch.stack([r for _, r, _ in runs])
    differ = int((every.any(0) & ~every.all(0)).sum())  # robust in some runs, not in all
    rates = pass_rates(model, x, largest)  # up to the largest call
    return Measure(engine, seconds, int(robust.sum()), len(x), rates, memory, stages, warm_up_s=warm_up,
                   warm_up_points=warm, runs=[run[0] for run in runs], differ=differ)


def compile_mode(engine: str, device: torch.device) -> str:
    """The engine's ``compile`` mode: off but for bench-compiled's (``COMPILE_MODE`` on its device)."""
    return COMPILE_MODE.get(device.type, "default") if engine == "bench-compiled" else "off"


def _run(engine: str, counter: PassCounter, x: Tensor, y: Tensor, norm: str, eps: float, version: str,
         attacks: list[str] | None, mode: str, batch_size: int | None = None):
    if engine.startswith("bench"):
        return run_bench(counter, x, y, norm, eps, version, attacks, mode, batch_size)
    if engine == "official":
        return run_official(counter, x, y, norm, eps, version, attacks, batch_size)
    return run_torchattacks(counter, x, y, norm, eps, version, 100 if engine == "torchattacks-100" else None)


def peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def table(measures: list[Measure]) -> str:
    """A markdown table: per engine its throughput, memory, robust points, limit ratio and warm-up (of the median
    run, with the range of all where there were several), then per stage (the median run's)."""
    lines = ["| engine | examples/s | peak memory | robust | seconds | pass-count limit (s) | ratio | warm-up (s, "
             "points) |", "|---|---|---|---|---|---|---|---|"]
    for m in measures:
        if m.error:
            lines.append(f"| {LABELS[m.engine]} | – | – | – | – | – | {m.error} | – |")
            continue
        limit = m.limit if m.limit > 0 else math.nan  # no stage made a pass
        seconds, ratio, robust = f"{m.seconds:.1f}", f"{m.seconds / limit:.2f}x", f"{m.robust}/{m.n}"
        if len(m.runs) > 1:  # the median run, and the range of all
            seconds += f" (median of {len(m.runs)}: {min(m.runs):.1f}-{max(m.runs):.1f})"
            ratio += f" ({min(m.runs) / limit:.2f}-{max(m.runs) / limit:.2f}x)"
        if m.differ:
            robust += f" ({m.differ} differ between runs)"
        lines.append(f"| {LABELS[m.engine]} | {m.examples_per_s:.2f} | {m.peak_bytes / 2 ** 20:.0f} MiB | {robust} | "
                     f"{seconds} | {m.limit:.1f} | {ratio} | {m.warm_up_s:.1f} ({m.warm_up_points}) |")
    lines += ["", "| engine | stage | seconds | forward calls (rows) | forward+backward calls (rows) | limit (s) "
              "| ratio |", "|---|---|---|---|---|---|---|"]
    for m in measures:
        for s in m.stages:
            limit = s.limit(m.rates)
            ratio = f"{s.seconds / limit:.2f}x" if limit > 0 else "–"
            lines.append(f"| {m.engine} | {s.name} | {s.seconds:.2f} | {len(s.forward_calls)} "
                         f"({sum(s.forward_calls)}) | {len(s.backward_calls)} ({sum(s.backward_calls)}) | "
                         f"{limit:.2f} | {ratio} |")
    rates = [m for m in measures if not m.error]
    if rates:
        lines += ["", f"Model throughput at {rates[0].n} rows per pass, measured in each engine's process (rows/s, "
                  "forward / forward+backward): " + "; ".join(
                      f"{m.engine} {m.rates.throughput(False):.0f} / {m.rates.throughput(True):.0f}" for m in rates)
                  + "."]
    return "\n".join(lines)
