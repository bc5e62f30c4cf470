"""Executors run the same spec elsewhere and give the same rows: two worker processes, and a local Ray cluster
with two workers. A worker killed mid-run loses no row and counts none twice; a Ray worker running other code
refuses the run instead of computing rows under its id."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

import bench
from bench.errors import BenchError
from bench.executors import RayExecutor
from bench.store import Store

KW = dict(batch_size=10, threads=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def slow_pgd(tmp_path_factory) -> str:
    """A PGD card slow enough on digits that a run is still going when a worker is killed."""
    path = tmp_path_factory.mktemp("executors") / "pgd-slow.yaml"
    path.write_text(yaml.safe_dump({"id": "pgd-slow", "family": "pgd",
                                    "params": {"norm": "Linf", "eps": 0.1, "steps": 150, "restarts": 2}}))
    return str(path)


def rows(results: Path, run_id: str):
    return Store(results).read_run(run_id).rows.drop(columns=["seconds"]).sort_values("index").reset_index(drop=True)


@pytest.fixture(scope="module")
def local_run(digits_card, slow_pgd, tmp_path_factory):
    results = tmp_path_factory.mktemp("local")
    summary = bench.evaluate(str(digits_card), slow_pgd, n=120, results=results, **KW)
    return summary, rows(results, summary.run_id)


def run_and_kill(run, results: Path, run_id_of, find_worker) -> tuple:
    """Start ``run`` in a thread, SIGKILL one worker once two shards are written, and wait for the run."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("summary", run()), daemon=True)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        shards = list((results / "runs").glob("*/shard-*.parquet")) if (results / "runs").is_dir() else []
        pid = find_worker() if len(shards) >= 2 else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.05)
    thread.join(300)
    assert killed is not None, "the run ended before a worker could be killed"
    return out["summary"], killed


def test_two_worker_processes_give_the_local_rows(digits_card, slow_pgd, local_run, tmp_path):
    summary = bench.evaluate(str(digits_card), slow_pgd, n=120, results=tmp_path, executor="processes", workers=2,
                             **KW)
    assert summary.run_id == local_run[0].run_id and summary.complete
    assert rows(tmp_path, summary.run_id).equals(local_run[1])
    assert (tmp_path / "runs" / summary.run_id / "summary.json").is_file()


def test_a_killed_worker_process_loses_no_row_and_counts_none_twice(digits_card, slow_pgd, local_run, tmp_path):
    def worker() -> int | None:
        children = [p for p in multiprocessing.active_children() if p.is_alive()]
        return children[0].pid if children else None

    summary, _ = run_and_kill(lambda: bench.evaluate(str(digits_card), slow_pgd, n=120, results=tmp_path,
                                                     executor="processes", workers=2, **KW),
                              tmp_path, None, worker)
    got = rows(tmp_path, summary.run_id)
    assert summary.n == 120 and got["index"].is_unique and got.equals(local_run[1])


# --- Ray ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _ray_task_pids() -> list[int]:
    """Ray worker processes running a shard now (Ray names a busy worker's process after its task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ray::_ray_shard" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_ray_cluster_of_two_workers_gives_the_local_rows(ray_cluster, digits_card, slow_pgd, local_run, tmp_path):
    summary = bench.evaluate(str(digits_card), slow_pgd, n=120, results=tmp_path, executor="ray", **KW)
    assert summary.run_id == local_run[0].run_id
    assert rows(tmp_path, summary.run_id).equals(local_run[1])


def test_a_killed_ray_worker_loses_no_row_and_counts_none_twice(ray_cluster, digits_card, slow_pgd, local_run,
                                                                tmp_path):
    summary, _ = run_and_kill(lambda: bench.evaluate(str(digits_card), slow_pgd, n=120, results=tmp_path,
                                                     executor="ray", **KW),
                              tmp_path, None, lambda: next(iter(_ray_task_pids()), None))
    got = rows(tmp_path, summary.run_id)
    assert summary.n == 120 and got["index"].is_unique and got.equals(local_run[1])


def test_a_ray_worker_with_other_code_is_refused(ray_cluster, digits_card, slow_pgd, tmp_path, monkeypatch):
    import bench.threats.pgd

    revision = bench.threats.pgd.PGD.revision
    other = tmp_path / "other-code"
    shutil.copytree(Path(bench.__file__).parent, other / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    pgd = other / "bench" / "threats" / "pgd.py"
    pgd.write_text(pgd.read_text().replace("    gradient_based = True\n",
                                           f"    gradient_based = True\n    revision = {revision + 1}\n"))
    ray_cluster.shutdown()  # Ray ships local code to workers for a whole job: a job whose workers run the copy
    monkeypatch.chdir(tmp_path)  # Ray puts the driver's folder first on its workers' path: not the checkout
    ray_cluster.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [str(other / "bench")]})
    with pytest.raises(BenchError) as err:
        bench.evaluate(str(digits_card), slow_pgd, n=20, results=tmp_path / "r", executor=RayExecutor(max_retries=0),
                       **KW)
    assert "a ray worker refused shard" in err.value.problem
    assert f"family.revision: {revision} in the run, {revision + 1} here" in err.value.problem
    assert not list((tmp_path / "r" / "runs").glob("*/shard-*.parquet")), "no row was written under the run's id"
