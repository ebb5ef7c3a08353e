#!/usr/bin/env python
"""LoRA against full fine-tuning at one model shape, on random weights: the update's compiled memory
(``compiled.memory_analysis()``, per device), its seconds per step, and the engine's weight refresh (the
decoding copy; with adapters, merged into it first).

    python tools/bench/lora.py                                           # Qwen2.5-0.5B, 8 rows x 256 tokens
    python tools/bench/lora.py --layers 8 --rows 8 --prompt-len 128 --response-len 128 --iters 2
    python tools/bench/lora.py --sides lora --rank 16 --quantize int8    # QLoRA

Each side runs in its own process (`common.run_child`), one after the other, so its peak host memory is its
own and no two compete for the cores. A side builds the model as ``tooln1-train`` does: full fine-tuning holds
float32 params; LoRA holds the frozen base in the compute dtype (quantized with ``--quantize``) and float32
adapters of ``--rank`` on every projection. The update is one GRPO optimizer step (on-policy, k3 KL against
zero reference log-probs, AdamW) over the whole batch, remat on. Its memory is compiled for the shape's full
depth from shapes alone; it is timed at ``--layers`` (full fine-tuning of the 0.5B shape holds ~12 GB on a
CPU), its first call (the compile) left out. The refresh is `Engine.refresh` after a step, its first call
(which compiles the copy) left out. Prints one JSON line per side, then a markdown row each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import common


def build(args, layers: int, abstract: bool):
    """(model, updater) of this side as ``tooln1-train`` builds them: full fine-tuning holds float32 params;
    LoRA the base in the compute dtype (quantized with ``--quantize``) and float32 adapters. ``abstract``:
    shapes only (nothing allocated), enough to compile."""
    from flax import nnx

    from tooln1.grpo import GRPOLoss
    from tooln1.models import PRESETS, CausalLM
    from tooln1.models.lora import add_adapters
    from tooln1.training.updater import OptimizerConfig, Updater

    lora = args.side == "lora"
    config = PRESETS[args.shape].replace(dtype=args.compute_dtype, remat=True, num_layers=layers,
                                         param_dtype=args.compute_dtype if lora else "float32")

    def make():
        model = CausalLM(config, rngs=nnx.Rngs(0))
        if lora:
            add_adapters(model, args.rank, 2.0 * args.rank, quantization=args.quantize, dtype="float32")
        return model

    model = nnx.eval_shape(make) if abstract else make()
    return model, Updater(model, GRPOLoss(on_policy=True), OptimizerConfig(learning_rate=1e-6), num_mini_batches=1)


def side(args) -> dict:
    """Measure one side (``args.side``) in this process."""
    from tooln1.platform.host_memory import keep_freed_memory

    keep_freed_memory()  # as tooln1-train does, before JAX starts its threads
    import jax
    import numpy as np

    from tooln1.models import PRESETS
    from tooln1.rollout.engine import Engine, EngineConfig

    rng = np.random.RandomState(0)
    n, p, r = args.rows, args.prompt_len, args.response_len
    vocab = PRESETS[args.shape].vocab_size
    batch = dict(
        prompt_ids=rng.randint(0, vocab, (n, p)).astype(np.int32), prompt_mask=np.ones((n, p), np.int32),
        response_ids=rng.randint(0, vocab, (n, r)).astype(np.int32),
        response_mask=np.ones((n, r), np.int32), advantages=rng.randn(n).astype(np.float32),
        ref_logprobs=np.zeros((n, r), np.float32),
    )
    depth = PRESETS[args.shape].num_layers
    _, updater = build(args, depth, abstract=True)  # the memory at the shape's full depth, compile-only
    mem = updater.lower(batch).compile().memory_analysis()
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
    trained = sum(x.size for x in jax.tree.leaves(updater.abstract_state().params))
    del updater
    layers = args.layers or depth
    model, updater = build(args, layers, abstract=False)
    state = updater.init(model)
    engine = Engine(updater.model(state), EngineConfig())
    refreshes, steps = [], []
    for i in range(args.iters + 1):  # the first of each compiles
        start = time.perf_counter()
        state, metrics = updater.step(state, batch)
        jax.block_until_ready(metrics)
        steps.append(time.perf_counter() - start)
        refreshes.append(engine.refresh(updater.model(state)))
        print(f"[{args.side}] step {i}: update {steps[-1]:.2f} s, refresh {refreshes[-1]:.3f} s, load "
              f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    lora = args.side == "lora"
    return dict(side=args.side, shape=args.shape, layers=depth, timed_layers=layers, rows=n, prompt_len=p,
                response_len=r, compute_dtype=args.compute_dtype, rank=args.rank if lora else 0,
                quantize=args.quantize if lora else "none", trained_params=int(trained),
                memory_bytes=memory, first_step_s=round(steps[0], 2),
                step_s=round(statistics.median(steps[1:]), 3), refresh_s=round(statistics.median(refreshes[1:]), 4),
                first_refresh_s=round(refreshes[0], 3), load_average=round(os.getloadavg()[0], 1))


def row(res: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    m = res["memory_bytes"]
    what = "full fine-tuning" if res["side"] == "full" else (
        f"LoRA r={res['rank']}" + (f", base {res['quantize']}" if res["quantize"] != "none" else ""))
    return (f"| {what} | {res['trained_params'] / 1e6:,.1f} M | {gib(m['argument'])} | {gib(m['temp'])} | "
            f"{gib(m['peak'])} | {res['timed_layers']} | {res['step_s']} | {res['refresh_s']} | "
            f"{res['peak_rss_mb'] / 1024:.1f} |")


def main() -> None:
    ap = common.parser(__doc__, child=True)
    ap.add_argument("--shape", default="qwen2.5-0.5b", help="a tooln1.models.PRESETS name")
    ap.add_argument("--layers", type=int, default=0,
                    help="layers of the timed model (0 = the shape's); the memory is always the shape's")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--compute-dtype", default="float32", help="float32 (a CPU run's) or bfloat16")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--quantize", default="none", help="LoRA's base: none, int8 or int4")
    ap.add_argument("--iters", type=int, default=2, help="timed steps after the first")
    ap.add_argument("--sides", default="full,lora", help="comma-separated: full, lora")
    ap.add_argument("--side", default="", help=argparse.SUPPRESS)  # set by the parent for its child
    args = ap.parse_args()
    if args.side:
        common.write_result(args.result, side(args))
        return
    results = []
    for name in args.sides.split(","):
        flags = {k: v for k, v in vars(args).items() if k not in ("sides", "side", "result")}
        argv = [__file__, "--side", name, *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items())]
        res = common.run_child(argv)
        print(json.dumps(res), flush=True)
        if "error" not in res:
            results.append(res)
    print("| side | trained params | update args GiB | temp GiB | peak GiB | timed layers | update s/step | refresh s "
          "| peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        print(row(res))


if __name__ == "__main__":
    main()
