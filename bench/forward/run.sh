#!/usr/bin/env bash
# Side-by-side forward benchmark: InterpMesh (TorchSharp) vs PyTorch eager, same model shape
# (GPT-2 small, random weights), same thread count, same machine, one run. Each configuration
# alternates the two implementations ROUNDS times and reports medians and the ratio.
#
#   bash bench/forward/run.sh [THREADS] [ROUNDS]       (defaults: 2 threads, 3 rounds)
#
# Needs Debian's python3-torch (apt-get install python3-torch) for /usr/bin/python3.
# Results and the exact command go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads="${1:-2}"
rounds="${2:-3}"
iters=5
warmup=2

/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "error: /usr/bin/python3 has no torch; apt-get install python3-torch" >&2; exit 1; }
# Debian's torch calls whatever libblas.so.3 is selected; the reference (Netlib) BLAS is ~70×
# slower than OpenBLAS and would make the comparison meaningless.
blas="$(/usr/bin/python3 bench/forward/pytorch_forward.py --batch 1 --seq 8 --threads 1 --logits last --warmup 0 --iters 1 \
  | /usr/bin/python3 -c "import json,sys; print(json.loads(sys.stdin.readline()).get('blas',''))")"
case "$blas" in
  *openblas-openmp*) ;;
  *) echo "error: PyTorch is using '$blas', not the OpenMP build of OpenBLAS (the pthread build oversubscribes the cores and halves its speed); apt-get install libopenblas0-openmp and apt-get remove libopenblas0-pthread" >&2; exit 1;;
esac
dotnet build -c Release bench/InterpMesh.Bench -v q -nologo >/dev/null
im="bench/InterpMesh.Bench/bin/Release/net10.0/linux-x64/interpmesh-bench"
py=(/usr/bin/python3 bench/forward/pytorch_forward.py)

# Same allocator settings for both sides (see TORCHSHARP.md: fewer page faults on both).
export MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }

# One measurement each: tokens/s of InterpMesh (default MKL dispatch, or MKL's vendor choice) or PyTorch.
im_run() { $im forward --preset gpt2-small --threads "$threads" --warmup $warmup --iters $iters $1 --json | field tokens_per_s; }
im_vendor_run() { (export INTERPMESH_MKL_CPU_DISPATCH=vendor; im_run "$1"); }
py_run() { "${py[@]}" --threads "$threads" --warmup $warmup --iters $iters $1 | field tokens_per_s; }

# row LABEL RUN_A "args A" RUN_B "args B": alternates A and B ROUNDS times; prints both medians and A/B.
row() {
  local label="$1" run_a="$2" a_args="$3" run_b="$4" b_args="$5" a=() b=()
  for ((r = 0; r < rounds; r++)); do
    a+=("$($run_a "$a_args")")
    b+=("$($run_b "$b_args")")
  done
  local ma mb
  ma=$(printf '%s\n' "${a[@]}" | median)
  mb=$(printf '%s\n' "${b[@]}" | median)
  printf '| %-44s | %10.0f | %10.0f | %5.2f |\n' "$label" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN {print a / b}')"
}

# run_pair LABEL "interpmesh args" "pytorch args"
run_pair() { row "$1" im_run "$2" py_run "$3"; }
# run_self LABEL "args A" "args B": InterpMesh against itself (overheads).
run_self() { row "$1" im_run "$2" im_run "$3"; }
# run_dispatch LABEL "args": oneMKL's kernels chosen by CPU features (A, the default) against
# MKL's own vendor-based choice (B, INTERPMESH_MKL_CPU_DISPATCH=vendor).
run_dispatch() { row "$1" im_run "$2" im_vendor_run "$2"; }

echo "MKL CPU dispatch: $($im forward --preset gpt2-small --threads 1 --batch 1 --seq 8 --warmup 0 --iters 1 --json | field mkl_cpu_dispatch); CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "threads $threads, rounds $rounds × $iters iterations (median), $(nproc) cores, $(date -u +%F)"
echo
echo "| configuration (GPT-2 small, float32) | InterpMesh tok/s | PyTorch tok/s | ratio |"
echo "| --- | ---: | ---: | ---: |"
run_pair "1×128, last-position logits" "--batch 1 --seq 128 --logits last" "--batch 1 --seq 128 --logits last"
run_pair "8×128, last-position logits" "--batch 8 --seq 128 --logits last" "--batch 8 --seq 128 --logits last"
run_pair "1×1024, last-position logits" "--batch 1 --seq 1024 --logits last" "--batch 1 --seq 1024 --logits last"
run_pair "8×128, last logits + all 12 resid_post captured" "--batch 8 --seq 128 --logits last --capture blocks.*.hook_resid_post" "--batch 8 --seq 128 --logits last --capture-resid"
echo
echo "| InterpMesh overheads (8×128) | A tok/s | B tok/s | A/B |"
echo "| --- | ---: | ---: | ---: |"
run_self "A: capture all resid_post, B: plain forward" "--batch 8 --seq 128 --logits last --capture blocks.*.hook_resid_post" "--batch 8 --seq 128 --logits last"
run_self "A: stop after layer 3 (no logits), B: all 12" "--batch 8 --seq 128 --logits none --capture blocks.3.hook_resid_post" "--batch 8 --seq 128 --logits none --capture blocks.11.hook_resid_post"
run_dispatch "A: MKL kernels by CPU features, B: by vendor" "--batch 8 --seq 128 --logits last"
