"""Startup of what a new user types first, against references timed in the same run: ``python -c "import torch"``
(what every listing and error paid before, issue 21) and ``python -c "import bench.cli"`` (the floor).

Each command runs as a user runs it, in a fresh interpreter: ``bench models``, ``bench run`` with an unknown
model, and ``bench threats`` once its family-derived fields are kept (``bench.cli.listings``). Asserted: each
takes less time than importing torch alone, which it used to import along with every family.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

COMMANDS = {
    "models": ["models"],
    "unknown-model": ["run", "--model", "mnist-cnn-standrd", "--threat", "pgd"],
    "threats-kept": ["threats"],
}


def _wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    return time.perf_counter() - start


def _best_of(argv: list[str], env: dict[str, str], repeats: int = 3) -> float:
    return min(_wall(argv, env) for _ in range(repeats))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listings_and_errors_start_without_torch(benchmark, name, tmp_path):
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "bench", *COMMANDS[name]]
    if name == "threats-kept":
        _wall(command, env)  # computes and keeps the listing (imports every family once)
    torch_s = _best_of([sys.executable, "-c", "import torch"], env)
    floor_s = _best_of([sys.executable, "-c", "import bench.cli"], env)
    benchmark.pedantic(lambda: _wall(command, env), rounds=3, iterations=1)
    took = benchmark.stats.stats.min
    ratio = took / torch_s
    benchmark.extra_info |= {"import_torch_s": torch_s, "import_bench_cli_s": floor_s, "ratio_vs_import_torch": ratio}
    print(f"\nbench {' '.join(COMMANDS[name])}: {took:.2f} s; import torch {torch_s:.2f} s ({ratio:.2f}x); "
          f"import bench.cli {floor_s:.2f} s")
    assert ratio < 1.0, f"bench {' '.join(COMMANDS[name])} took {ratio:.2f}x the time of importing torch alone"
