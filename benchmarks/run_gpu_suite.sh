#!/usr/bin/env bash
# The GPU goals, measured: all three benchmarks at GPT-2-small shape on CUDA.
#
#   benchmarks/run_gpu_suite.sh [OUT_DIR]        # OUT_DIR defaults to benchmark-results/
#
# from anywhere; it runs each script as `python -m benchmarks.NAME` from the repository root.
#
# Writes loop_overhead.json, amp_sweep.json and mfu.json into OUT_DIR, with each
# script's printed output next to it (*.txt). Each script takes a few minutes
# at most on an H100; the step counts are kept modest for that. Set PYTHON to
# choose the interpreter, and SWEEP_SHAPES="tiny small medium gpt2-small" for
# the whole AMP sweep. Without torch or a CUDA GPU it stops before running
# anything. A failing script does not stop the others; the exit status says
# whether all of them ran.
set -uo pipefail

out_dir="${1:-benchmark-results}"
python="${PYTHON:-python}"
sweep_shapes="${SWEEP_SHAPES:-gpt2-small}"

case "$out_dir" in
/*) ;;
*) out_dir="$PWD/$out_dir" ;; # relative to where the suite was started
esac
cd "$(dirname "$0")/.."

# Check once, up front, for what every script needs; otherwise each would fail on its own.
if ! "$python" -c "import torch" 2>/dev/null; then
    echo "run_gpu_suite.sh: '$python' cannot import torch; set PYTHON to the project's interpreter" \
        "(e.g. PYTHON=.venv/bin/python)" >&2
    exit 1
fi
if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "run_gpu_suite.sh: needs a CUDA GPU, and torch in '$python' sees none;" \
        "for CPU figures run the scripts one by one (see benchmarks/README.md)" >&2
    exit 1
fi

mkdir -p "$out_dir"

failed=()
run() {
    local name="$1"
    shift
    echo "=== $name: $*"
    if ! "$python" -m "benchmarks.$name" --device cuda --out "$out_dir/$name.json" "$@" 2>&1 | tee "$out_dir/$name.txt"; then
        failed+=("$name")
    fi
}

# 3 rounds of 40 steps per loop, 10 warm-up steps left out of each median.
run loop_overhead --shape gpt2-small --steps 40 --warmup 10 --rounds 3
# Strict FP32 (TF32 off) against bf16: 40 steps per arm, 5 warm-up steps untimed.
# shellcheck disable=SC2086  # the shape list is meant to split into words
run amp_sweep --shapes $sweep_shapes --steps 40 --warmup 5
# Eager and torch.compile (inductor), 40 steps each; the first 3 steps hold the compilation.
run mfu --shape gpt2-small --steps 40 --compile both

if ((${#failed[@]})); then
    echo "failed: ${failed[*]} (see $out_dir/*.txt)" >&2
    exit 1
fi
echo "all results in $out_dir"
