"""Executors: where a run's missing shards are computed. Every one runs the same ``RunSpec`` through
``build`` and ``compute_shard``, so their rows are the same; they differ only in where the work happens.

- ``local``: in this process (today's default);
- ``processes``: one worker process per device on this host (e.g. one per GPU, or several CPU workers), each
  claiming shards from the shared store, so a worker that dies leaves its shard to another;
- ``ray``: one Ray task per shard on a Ray cluster (``ray.init(address)``: ``auto``, ``HOST:PORT``, or a local
  cluster); each task rebuilds the run from the spec on its worker and returns its rows, which the driver
  writes. A task whose worker dies is retried by Ray; a shard is written once under its fixed name, so no
  row is lost or counted twice. A worker with other code, numerics, cards, data or weights refuses the spec.

Executors other than ``local`` need a portable spec (a model card and a dataset by name, not objects in
memory). Workers run with the spec's CPU thread count, which is part of the run's numerics.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.errors import BenchError, require
from bench.shards import compute_shard, execute, shards_of
from bench.spec import Evaluation, RunSpec, SpecError, build
from bench.store import Store

EXECUTORS = ("local", "processes", "ray")
ROUNDS = 3  # a processes run whose workers all died is restarted this many times before giving up


@contextlib.contextmanager
def spec_threads(spec: RunSpec) -> Iterator[None]:
    """Run with the spec's CPU thread count (part of its numerics), restoring this process's afterwards."""
    before = torch.get_num_threads()
    threads = spec.numerics.get("threads")
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Executor(ABC):
    @abstractmethod
    def execute(self, spec: RunSpec, store: Store, *, progress: bool, desc: str,
                save_inputs: bool = False) -> list[str]:
        """Compute every shard of the run not yet in ``store`` (with ``save_inputs``, storing each point's
        adversarial input too); returns the threats' notes."""


class LocalExecutor(Executor):
    """In this process, against an Evaluation the driver built (a bare module or tensors included)."""

    def __init__(self, evaluation: Evaluation):
        self.evaluation = evaluation

    def execute(self, spec: RunSpec, store: Store, *, progress: bool, desc: str,
                save_inputs: bool = False) -> list[str]:
        with spec_threads(spec):
            return execute(self.evaluation, shards_of(self.evaluation), store, progress=progress, desc=desc,
                           save_inputs=save_inputs)


def _portable(spec: RunSpec, executor: str, save_inputs: bool = False) -> None:
    if save_inputs:
        raise BenchError(f"the {executor} executor does not save adversarial inputs",
                         "run with --executor local to save them (--save-adv)")
    if not spec.portable:
        raise BenchError(f"the {executor} executor runs a model card on a named dataset; this run evaluates a "
                         "module or tensors held in memory", "write a model card (and a dataset folder) for it, or "
                                                             "run it with the local executor")


# --- processes --------------------------------------------------------------------------------------------


def _process_worker(spec: dict[str, Any], root: str, device: str, trust_code: tuple[str, ...]) -> list[str]:
    """One worker process: rebuild the run on ``device`` and compute whatever shards nobody else holds."""
    run = RunSpec.from_dict(spec)
    with spec_threads(run):
        ev = build(run, device=device, trust_code=trust_code)
        return execute(ev, shards_of(ev), Store(root), progress=False, desc="")


class ProcessExecutor(Executor):
    """One worker process per entry of ``devices`` (e.g. ``["cuda:0", "cuda:1"]``, or ``["cpu"] * 2``)."""

    def __init__(self, devices: list[str], trust_code: tuple[str, ...] = ()):
        if not devices:
            raise BenchError("the processes executor needs at least one worker", "pass --workers 2 (or more)")
        self.devices, self.trust_code = devices, trust_code

    def execute(self, spec: RunSpec, store: Store, *, progress: bool, desc: str,
                save_inputs: bool = False) -> list[str]:
        from concurrent.futures import ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        _portable(spec, "processes", save_inputs)
        n_shards = -(-spec.n // spec.batch_size)
        notes: dict[str, None] = {}
        with _ShardBar(store, spec, n_shards, progress, desc) as bar:
            for _ in range(ROUNDS):
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(len(self.devices), mp_context=context) as pool:
                    futures = [pool.submit(_process_worker, spec.to_dict(), str(store.root), device, self.trust_code)
                               for device in self.devices]
                    while wait(futures, timeout=0.5).not_done:
                        bar.refresh()
                failures = []
                for future in futures:
                    try:
                        notes.update(dict.fromkeys(future.result()))
                    except BrokenProcessPool as err:  # a worker died: its shard is left to the next round
                        failures.append(f"a worker process died ({err})")
                bar.refresh()
                if bar.complete():
                    return list(notes)
            raise BenchError(f"the processes executor left run {spec.run_id} incomplete after {ROUNDS} rounds "
                             f"({'; '.join(failures) or 'no error reported'})",
                             "rerun the command: finished shards are kept")


class _ShardBar:
    """Progress of a run counted from the shard files in the store (written by any process)."""

    def __init__(self, store: Store, spec: RunSpec, n_shards: int, progress: bool, desc: str):
        self.store, self.spec, self.n_shards = store, spec, n_shards
        self.bar = tqdm(total=n_shards, disable=not progress, desc=desc, unit="shard", dynamic_ncols=True)

    def done(self) -> int:
        return sum(self.store.shard_path(self.spec.run_id, k).is_file() for k in range(self.n_shards))

    def complete(self) -> bool:
        return self.done() == self.n_shards

    def refresh(self) -> None:
        done = self.done()
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> _ShardBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


# --- ray --------------------------------------------------------------------------------------------------

_BUILT: dict[tuple[str, str], Evaluation] = {}  # per Ray worker process: runs already built there


def _ray_shard(spec: dict[str, Any], number: int, trust_code: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """A Ray task: rebuild the run on this worker (once per worker process) and compute one shard's rows."""
    run = RunSpec.from_dict(spec)
    device = "cuda" if run.numerics["device"] == "cuda" else run.numerics["device"]
    with spec_threads(run):
        if (run.run_id, device) not in _BUILT:
            _BUILT[(run.run_id, device)] = build(run, device=device, trust_code=trust_code)
        ev = _BUILT[(run.run_id, device)]
        shard = next(s for s in shards_of(ev) if s.number == number)
        ev.target.module.eval()
        return compute_shard(ev, shard)


class RayExecutor(Executor):
    """One Ray task per missing shard; ``address``: ``auto``, ``HOST:PORT`` or None (a Ray already initialised in
    this process, else a local cluster); ``runtime_env``: Ray's, e.g. to set the workers' environment."""

    def __init__(self, address: str | None = None, trust_code: tuple[str, ...] = (),
                 runtime_env: dict[str, Any] | None = None, max_retries: int = 3):
        self.address, self.trust_code, self.runtime_env, self.max_retries = address, trust_code, runtime_env, \
            max_retries

    def _ray(self):
        ray = require("ray", "the ray executor", "pip install 'bench[ray]'")
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        return ray

    def execute(self, spec: RunSpec, store: Store, *, progress: bool, desc: str,
                save_inputs: bool = False) -> list[str]:
        _portable(spec, "ray", save_inputs)
        ray = self._ray()
        threads = spec.numerics.get("threads") or 1
        resources = {"num_gpus": 1} if spec.numerics["device"] == "cuda" else {"num_cpus": threads}
        task = ray.remote(_ray_shard).options(max_retries=self.max_retries, retry_exceptions=False,
                                              runtime_env=self.runtime_env, **resources)
        n_shards = -(-spec.n // spec.batch_size)
        todo = [k for k in range(n_shards) if not store.shard_done(spec.run_id, k)]
        pending = {task.remote(spec.to_dict(), k, self.trust_code): k for k in todo}
        notes: dict[str, None] = {}
        bar = tqdm(total=n_shards, initial=n_shards - len(todo), disable=not progress, desc=desc, unit="shard",
                   dynamic_ncols=True)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                number = pending.pop(ready[0])
                try:
                    table, info = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    if isinstance(cause, BenchError):
                        raise BenchError(f"a ray worker refused shard {number}: {cause.problem}", cause.fix) from None
                    raise
                store.write_shard(spec.run_id, number, table, info)
                notes.update(dict.fromkeys(info["notes"]))
                bar.update(1)
        finally:
            for ref in pending:
                ray.cancel(ref)
            bar.close()
        return list(notes)


def worker_devices(device: torch.device, workers: int | None) -> list[str]:
    """One device per worker process: every GPU (or the first ``workers``) on CUDA, else ``workers`` (default 2)
    CPU workers."""
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(min(count, workers or count))]
    return [str(device)] * (workers or 2)


def make_executor(name: str, *, evaluation: Evaluation | None, devices: list[str], address: str | None,
                  trust_code: tuple[str, ...]) -> Executor:
    """The executor a user named (`--executor`), with its options."""
    if name == "local":
        if evaluation is None:
            raise SpecError("the local executor needs the run built in this process", "this is a bug in bench")
        return LocalExecutor(evaluation)
    if name == "processes":
        return ProcessExecutor(devices, trust_code)
    if name == "ray":
        return RayExecutor(address, trust_code)
    raise BenchError(f"unknown executor {name!r}", f"use one of {', '.join(EXECUTORS)}")

