#!/usr/bin/env python
"""Where a prefill chunk's time goes: one chunk through every layer of a model, timed with the engine's
attention (blockwise over the context slots and the chunk, as `tooln1.rollout.programs` lays them out),
with dense attention over the same keys, and with no attention at all (the projections, MLP, norms and
RoPE alone). The gap between the first and the last is what attention costs the engine's prefill.

    python tools/bench/prefill_parts.py --model runs/smollm2/base --chunk 512 --context 2176 --seen 512

``--context`` is the context slots a chunk gathers (the engine's ``2 * pages_per_seq * page_size``),
``--seen`` how many of them hold this prompt's earlier tokens (the rest belong to nobody).
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp

from tooln1.checkpoints.hf_import import load_model
from tooln1.models.attention import attention


def _program(model, attend_kind: str, chunk: int, context: int, seen: int, block: int):
    cfg = model.config
    ctx = -(-context // block) * block
    q_seg = jnp.ones((1, chunk), jnp.int32)
    kv_seg = jnp.concatenate([(jnp.arange(ctx) < seen).astype(jnp.int32)[None], q_seg], axis=1)
    q_pos = jnp.arange(chunk, dtype=jnp.int32)[None]
    kv_pos = jnp.concatenate([jnp.full((1, ctx), -1, jnp.int32), q_pos], axis=1)
    ctx_k = jnp.ones((1, ctx, cfg.num_kv_heads, cfg.head_dim), cfg.dtype) * 0.01

    def attend(q, k, v, state, layer):
        if attend_kind == "none":
            return q, state
        keys, values = jnp.concatenate([ctx_k, k], axis=1), jnp.concatenate([ctx_k, v], axis=1)
        impl = "dense" if attend_kind == "dense" else "blockwise"
        return attention(q, keys, values, q_seg, kv_seg, q_pos, kv_pos, implementation=impl,
                         block_size=block), state

    @jax.jit
    def run(tokens):
        x = model.embed_tokens(tokens)
        x, _ = model.run_layers(x, *model.rope(jnp.arange(seen, seen + chunk)[None]), attend, ())
        return x

    return functools.partial(run, jnp.ones((1, chunk), jnp.int32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--context", type=int, default=2176)
    ap.add_argument("--seen", type=int, default=512)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = load_model(args.model, dtype=args.dtype)
    cfg = model.config
    linear = 2 * args.chunk * cfg.num_layers * cfg.hidden_size * (
        (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        + cfg.num_heads * cfg.head_dim + 3 * cfg.intermediate_size)
    print(f"{args.model}: {args.chunk}-token chunk, {args.context} context slots ({args.seen} seen), "
          f"block {args.block}, {args.dtype}; the layers' matmuls are {linear / 1e9:.1f} GFLOP")
    for kind in ("none", "blockwise", "dense"):
        fn = _program(model, kind, args.chunk, args.context, args.seen, args.block)
        fn().block_until_ready()
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn().block_until_ready()
            best = min(best, time.perf_counter() - t0)
        print(f"  attention {kind:9s}: {best * 1e3:7.1f} ms  ({linear / best / 1e9:.0f} GFLOP/s of matmul)")


if __name__ == "__main__":
    main()
