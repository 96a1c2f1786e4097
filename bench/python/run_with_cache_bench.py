#!/usr/bin/env python3
"""Times the Python client's run_with_cache for one Run (issue #23's benchmark).

Usually started by `interpmesh-bench python-client` (with --stdin), which serves a random
GPT-2-small-shaped model, times the .NET client for the same request and alternates the two call by
call (docs/benchmarks.md). On its own:

    /usr/bin/python3 bench/python/run_with_cache_bench.py --url http://127.0.0.1:50051 \\
        [--ids ids.json | --batch 8 --seq 128] [--capture 'blocks.*.hook_resid_post'] [--iters 5] [--json]

`--url` is a model service (or a gateway with `--model NAME`). The request: the ids (a JSON list of
id lists, or random ids of --batch x --seq with seed 7), every hook matching --capture, last-position
logits, float32. Prints the median seconds per call, or with --json
{"times": [...], "median_seconds": ..., "captured_bytes": ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

import numpy as np  # noqa: E402

import interpmesh  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default=os.environ.get("INTERPMESH_API_KEY"))
    parser.add_argument("--model", default=None, help="model name at a gateway (default: none, for a model service)")
    parser.add_argument("--ids", type=Path, help="JSON list of token-id lists")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--capture", default="blocks.*.hook_resid_post")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stdin", action="store_true",
                        help="after the warm-up print 'ready', then time one call per line 'run' read from stdin "
                             "(printing its seconds and captured bytes), until 'quit': so a driver can alternate calls")
    args = parser.parse_args()

    with interpmesh.connect(args.url, key=args.key) as mesh:
        model = mesh.model(args.model)
        if args.ids:
            ids = json.loads(args.ids.read_text())
        else:
            rng = np.random.default_rng(7)
            ids = rng.integers(0, model.info.vocab_size, size=(args.batch, args.seq)).tolist()
        capture = [g for g in args.capture.split(",") if g]
        model.info  # fetched once, outside the timing

        def call() -> int:
            _, cache = model.run_with_cache(ids, names_filter=capture, logits="last")
            return sum(a.nbytes for a in cache.values())

        for _ in range(args.warmup):
            call()
        if args.stdin:
            print("ready", flush=True)
            for line in sys.stdin:
                if line.strip() != "run":
                    break
                start = time.perf_counter()
                captured = call()
                print(json.dumps({"seconds": time.perf_counter() - start, "captured_bytes": captured}), flush=True)
            return 0
        times, captured = [], 0
        for _ in range(args.iters):
            start = time.perf_counter()
            captured = call()
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    if args.json:
        print(json.dumps({"times": times, "median_seconds": median, "captured_bytes": captured}))
    else:
        print(f"run_with_cache: median {median:.4f} s over {len(times)} calls, {captured / 1e6:.1f} MB captured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
