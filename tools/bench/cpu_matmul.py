#!/usr/bin/env python
"""What one CPU matmul costs in XLA:CPU (our engine's compiler) and in PyTorch (vLLM-CPU's), on the shapes
of a SmolLM2-135M layer: a 512-token prefill chunk and an 8-row decode step, float32 and bfloat16.

The rollout benchmark's ``apibank`` workload spends most of its time in these matmuls, so where the two
libraries' kernels differ, so do the engines, whatever each schedules. Each shape runs as one jitted
program (JAX) or one ``torch.matmul`` under ``inference_mode`` (PyTorch), best of ``--repeats`` timed loops
after a warm-up, each side in its own process, nothing else running.

    python tools/bench/cpu_matmul.py                  # prints a markdown table
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 576, 1536, 9, 3, 64  # SmolLM2-135M
SHAPES = {  # name: (inputs, outputs)
    "qkv projection": (HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
    "gate+up projection": (HIDDEN, 2 * INTERMEDIATE),
    "down projection": (INTERMEDIATE, HIDDEN),
}
ROWS = {"prefill, 512 tokens": 512, "decode, 8 rows": 8}


def _inner(rows: int) -> int:
    return 20 if rows > 8 else 200


def _time(fn, repeats: int, inner: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def _jax_call(f, x, w):
    return f(x, w).block_until_ready()


def _jax_side(dtype: str, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    out = {}
    for rows_name, rows in ROWS.items():
        for name, (k, n) in SHAPES.items():
            x = jnp.ones((rows, k), dtype)
            w = jnp.ones((k, n), dtype)
            f = jax.jit(lambda a, b: a @ b)
            out[f"{rows_name}|{name}"] = _time(functools.partial(_jax_call, f, x, w), repeats, _inner(rows))
    return out


def _torch_side(dtype: str, repeats: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    with torch.inference_mode():
        for rows_name, rows in ROWS.items():
            for name, (k, n) in SHAPES.items():
                x = torch.ones(rows, k, dtype=getattr(torch, dtype))
                w = torch.ones(k, n, dtype=getattr(torch, dtype))
                out[f"{rows_name}|{name}"] = _time(functools.partial(torch.matmul, x, w), repeats, _inner(rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)  # "jax:float32" in a child process
    args = ap.parse_args()
    if args.side:
        lib, dtype = args.side.split(":")
        print(json.dumps((_jax_side if lib == "jax" else _torch_side)(dtype, args.repeats)))
        return
    results = {}
    for dtype in ("float32", "bfloat16"):
        for lib in ("jax", "torch"):
            run = subprocess.run([sys.executable, __file__, "--side", f"{lib}:{dtype}", "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)
            results[lib, dtype] = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"`python tools/bench/cpu_matmul.py` on {os.cpu_count()} cores: GFLOP/s of one matmul "
          "(XLA:CPU through jax.jit, PyTorch's torch.matmul)\n")
    print("| rows | matmul | float32 XLA | float32 PyTorch | bfloat16 XLA | bfloat16 PyTorch |")
    print("|---|---|---|---|---|---|")
    for rows_name, rows in ROWS.items():
        for name, (k, n) in SHAPES.items():
            flops = 2 * rows * k * n
            cells = [f"{flops / results[lib, dtype][f'{rows_name}|{name}'] / 1e9:.1f}"
                     for dtype in ("float32", "bfloat16") for lib in ("jax", "torch")]
            print(f"| {rows_name} | {name} [{k}×{n}] | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
