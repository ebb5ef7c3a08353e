#!/usr/bin/env python
"""Seconds per GRPO update step (``Updater.step``: forward + backward + AdamW over one batch) at a
model shape, on random weights and a random batch: the figure a model-side change must not regress.

    python tools/bench/update.py --shape quickstart --share-prompt   # the quickstart's GRPO step
    python tools/bench/update.py --shape qwen2.5-0.5b --layers 4 --rows 4 --prompt-len 256 --response-len 64

Run it from two checkouts (``PYTHONPATH=<checkout>``) alternately to compare them on a busy machine:
both see the same load. Prints one JSON line.
"""
from __future__ import annotations

import json
import resource
import statistics
import time

import common

SHAPES = {  # name -> ModelConfig fields (quickstart: configs/quickstart.py's tiny model)
    "quickstart": dict(vocab_size=2995, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16),
}


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--shape", default="quickstart", help="quickstart or a tooln1.models.PRESETS name")
    ap.add_argument("--layers", type=int, default=0, help="override the number of layers (0 = the shape's)")
    ap.add_argument("--rows", type=int, default=64, help="responses per batch (quickstart: a mini-batch)")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=448)
    ap.add_argument("--response-len", type=int, default=48)
    ap.add_argument("--share-prompt", action="store_true", help="score each group's prompt once")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    from tooln1.platform.host_memory import keep_freed_memory

    keep_freed_memory()  # as tooln1-train does, before JAX starts its threads
    import jax
    import numpy as np
    from flax import nnx

    from tooln1.grpo import GRPOLoss
    from tooln1.models import PRESETS, CausalLM, ModelConfig
    from tooln1.training.updater import OptimizerConfig, Updater

    config = ModelConfig(**SHAPES[args.shape]) if args.shape in SHAPES else PRESETS[args.shape]
    if args.layers:
        config = config.replace(num_layers=args.layers)
    model = CausalLM(config, rngs=nnx.Rngs(0))
    g = args.group if args.share_prompt else 1
    updater = Updater(model, GRPOLoss(rows_per_prompt=g, on_policy=True), OptimizerConfig(learning_rate=1e-6),
                      num_mini_batches=1)
    state = updater.init(model)
    rng = np.random.RandomState(0)
    n, p, r = args.rows, args.prompt_len, args.response_len
    prompts = np.repeat(rng.randint(0, config.vocab_size, (n // args.group, p)), args.group, axis=0)
    batch = dict(
        prompt_ids=prompts.astype(np.int32), prompt_mask=np.ones((n, p), np.int32),
        response_ids=rng.randint(0, config.vocab_size, (n, r)).astype(np.int32),
        response_mask=np.ones((n, r), np.int32), advantages=rng.randn(n).astype(np.float32),
        old_logprobs=np.zeros((n, r), np.float32), ref_logprobs=np.zeros((n, r), np.float32),
    )
    start = time.perf_counter()
    state, metrics = updater.step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times, faults = [], []
    for _ in range(args.iters):
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        state, metrics = updater.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    print(json.dumps(dict(shape=args.shape, layers=config.num_layers, rows=n, prompt_len=p, response_len=r,
                          share_prompt=args.share_prompt, first_step_s=round(compile_s, 2),
                          step_s_median=round(statistics.median(times), 4), step_s_min=round(min(times), 4),
                          page_faults_per_step=int(statistics.median(faults)))))


if __name__ == "__main__":
    main()
