#!/usr/bin/env python
"""What only a GPU can check: the kernels tooln1 picks there against its portable paths, and the engine's
greedy tokens against transformers' ``generate`` on the same GPU. Run it on a GPU machine before training
there, and again after upgrading JAX, CUDA or the GPU: the test suite runs these paths only on a CPU.

1. JAX's Pallas (Triton) paged attention vs the pure-JAX path, bf16, at Qwen2.5-0.5B's and 7B's head shapes,
   with every page no sequence reaches poisoned; and the time of one call of each.
2. cuDNN's fused attention (prompt prefill) vs the dense reference, bf16, left-padded rows.
2b. The prefill chunk kernel (`tooln1.models.chunk_attention`, Pallas Triton) vs the portable blockwise path,
   bf16, an 8,192-token chunk of packed prompts over 3,200 context slots at Qwen2.5-0.5B's heads; and the
   time of one call of each (the blockwise one at the engine's default blocks of 256).
3. float32 engine vs HF ``generate`` (TF32 off on both sides): greedy tokens must be identical.
4. bfloat16 engine with the GPU kernels vs the same engine on the pure-JAX paths, and vs HF in bf16:
   how far the greedy tokens agree and how close the chosen tokens' log-probs are.

    python tools/check_gpu.py            # prints PASS/FAIL per check; exit status 1 if any failed

On a machine without a GPU it says so and exits 0; ``--cpu`` runs checks 1, 2b, 3 and 4 there at small sizes
(the kernels in Pallas' interpreter, both engines on the same paths) to try this script out.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.4")  # PyTorch shares the GPU in checks 3 and 4

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tooln1.models import chunk_attention as ca  # noqa: E402
from tooln1.models import paged_attention as pa  # noqa: E402
from tooln1.models.attention import attention  # noqa: E402

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def _time(fn, *args, iters: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def check_paged_attention(kv: int, heads: int, d: int, slots: int = 64, max_len: int = 2048, ps: int = 16) -> None:
    rng = np.random.RandomState(d)
    m = max_len // ps
    n = slots * m + 1
    lengths = rng.randint(1, max_len + 1, slots).astype(np.int32)
    table = (1 + rng.permutation(n - 1)[: slots * m]).reshape(slots, m).astype(np.int32)
    rows, width = pa.page_shape(ps, d)
    k_pool = rng.randn(kv, n, ps, d).astype(np.float32)
    v_pool = rng.randn(kv, n, ps, d).astype(np.float32)
    used = np.zeros((n, ps), bool)
    for s, length in enumerate(lengths):
        t = np.arange(length)
        used[table[s, t // ps], t % ps] = True
    k_pool[:, ~used], v_pool[:, ~used] = 1e4, -1e4  # what no sequence reaches must not be read
    q = rng.randn(slots, heads, d).astype(np.float32)
    bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    pools = [bf16(p).reshape(kv, n, rows, width) for p in (k_pool, v_pool)]
    args = (bf16(q), *pools, jnp.asarray(lengths), jnp.asarray(table))
    run = {b: jax.jit(functools.partial(pa.ragged_paged_attention, backend=b)) for b in ("pallas_gpu", "jax")}
    got, want = (np.asarray(run[b](*args), np.float32) for b in ("pallas_gpu", "jax"))
    err = float(np.max(np.abs(got - want)))
    ms = {b: 1e3 * _time(f, *args) for b, f in run.items()}
    report(f"paged attention kv{kv} h{heads} d{d}", bool(np.isfinite(got).all()) and err < 3e-2,
           f"{slots} slots, lengths 1-{max_len}, max |kernel - pure JAX| {err:.2e}; one call "
           f"{ms['pallas_gpu']:.3f} ms (Pallas GPU) vs {ms['jax']:.3f} ms (pure JAX)")


def check_cudnn_prefill(b: int = 4, t: int = 512, heads: int = 14, kv: int = 2, d: int = 64) -> None:
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (b, t, heads, d)).astype(jnp.bfloat16)
    k, v = (jax.random.normal(key, (b, t, kv, d)).astype(jnp.bfloat16) for key in keys[1:])
    seg = np.ones((b, t), np.int32)
    for row, pad in enumerate([0, 7, 100, 300][:b]):
        seg[row, :pad] = 0
    seg = jnp.asarray(seg)
    got = np.asarray(jax.jit(functools.partial(attention, implementation="cudnn"))(q, k, v, seg, seg), np.float32)
    want = np.asarray(attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), seg, seg,
                                implementation="dense"))
    real = np.asarray(seg) != 0
    err = float(np.max(np.abs(got[real] - want[real])))
    report("cuDNN prefill attention", err < 3e-2, f"[{b}, {t}, {heads}/{kv} heads, {d}], left padding 0-300, "
           f"max |cuDNN bf16 - dense fp32| {err:.2e} on real rows")


def check_chunk_attention(chunk: int = 8192, ctx: int = 3200, heads: int = 14, kv: int = 2, d: int = 64,
                          interpret: bool = False) -> None:
    """As the engine's prefill builds it: keys [context; chunk], prompts of 200-1,200 tokens packed in the
    chunk, the first continuing 1,000 context slots, the last 300 chunk slots padding."""
    rng = np.random.RandomState(0)
    ctx_pad = -(-ctx // 256) * 256
    seg, ctx_seg = np.zeros(chunk, np.int32), np.zeros(ctx_pad, np.int32)
    start, n = 0, 1
    while start < chunk - chunk // 27:
        length = min(rng.randint(chunk // 40, chunk // 7), chunk - chunk // 27 - start)
        seg[start:start + length], start, n = n, start + length, n + 1
    ctx_seg[: ctx * 5 // 16] = 1
    q_pos = np.arange(chunk, dtype=np.int32)
    kv_pos = np.concatenate([np.full(ctx_pad, -1, np.int32), q_pos])
    masks = [jnp.asarray(x)[None] for x in (seg, np.concatenate([ctx_seg, seg]), q_pos, kv_pos)]
    bf16 = lambda *shape: jnp.asarray(rng.randn(1, *shape), jnp.bfloat16)  # noqa: E731
    q, k, v = bf16(chunk, heads, d), bf16(ctx_pad + chunk, kv, d), bf16(ctx_pad + chunk, kv, d)
    run = {"kernel": jax.jit(functools.partial(ca.chunk_attention, interpret=interpret)),
           "blockwise": jax.jit(functools.partial(attention, implementation="blockwise", block_size=256))}
    got, want = (np.asarray(run[p](q, k, v, *masks), np.float32) for p in ("kernel", "blockwise"))
    err = float(np.max(np.abs(got - want)))
    ms = {p: 1e3 * _time(f, q, k, v, *masks, iters=3) for p, f in run.items()}
    report("prefill chunk kernel", bool(np.isfinite(got).all()) and err < 3e-2 and not got[0, seg == 0].any(),
           f"[{chunk} over {ctx} context, {heads}/{kv} heads, {d}], {n - 1} prompts, max |kernel - blockwise| "
           f"{err:.2e}; one call {ms['kernel']:.3f} ms (kernel) vs {ms['blockwise']:.3f} ms (blockwise)")


def _checkpoint(tmp: str, dtype: str, **shape) -> str:
    from tooln1.checkpoints.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(os.path.join(tmp, dtype), dtype=dtype, seed=1, **shape)


def _prompts(vocab: int, count: int = 8) -> list[list[int]]:
    rng = np.random.RandomState(0)
    return [rng.randint(3, vocab - 1, rng.randint(20, 300)).tolist() for _ in range(count)]


def ours(ckpt: str, dtype: str, prompts, new: int, eos: int, portable: bool = False):
    """Greedy (tokens, log-probs) per prompt from the engine; ``portable``: the pure-JAX attention paths."""
    from tooln1.checkpoints.hf_import import load_model
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    model = load_model(ckpt, dtype=dtype, **({"attention": "blockwise"} if portable else {}))
    engine = Engine(model, EngineConfig(num_slots=4))
    cfg = SamplingConfig(num_samples=1, max_new_tokens=new, temperature=0.0, eos_ids=(eos,))
    original = pa._backend
    if portable:
        pa._backend = lambda backend, *a: backend or "jax"
        engine.layout = dataclasses.replace(engine.layout, prefill_attention="blockwise")
    try:
        results, _ = engine.generate(prompts, cfg, jax.random.key(0))
    finally:
        pa._backend = original
    return [(r[0].tokens.tolist(), r[0].logprobs) for r in results]


def hf(ckpt: str, dtype: str, prompts, new: int, eos: int):
    import torch
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).to(device).eval()
    out = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(input_ids=torch.tensor([p], device=device), max_new_tokens=new, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)[0, len(p):].tolist()
        out.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    return out


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, list[int]]:
    """(sequences identical, first differing position of each)."""
    firsts = [next((i for i, (x, y) in enumerate(zip(s, t, strict=False)) if x != y), min(len(s), len(t)))
              if s != t else len(s) for s, t in zip(a, b, strict=True)]
    return sum(s == t for s, t in zip(a, b, strict=True)), firsts


def check_engine_float32(tmp: str, new: int = 48) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        ckpt = _checkpoint(tmp, "float32", layers=4, hidden=256, heads=4, kv_heads=2, intermediate=512,
                           nonzero_biases=True)
        vocab = _vocab(ckpt)
        prompts, eos = _prompts(vocab), vocab - 1
        got = [t for t, _ in ours(ckpt, "float32", prompts, new, eos)]
        same, firsts = _agreement(got, hf(ckpt, "float32", prompts, new, eos))
    finally:
        jax.config.update("jax_default_matmul_precision", None)
    report("engine float32 greedy = HF generate", same == len(prompts),
           f"{same}/{len(prompts)} sequences of {new} tokens identical (first differences at {firsts})")


def _vocab(ckpt: str) -> int:
    import json

    with open(os.path.join(ckpt, "config.json")) as f:
        return json.load(f)["vocab_size"]


def check_engine_bfloat16(tmp: str, new: int = 48) -> None:
    ckpt = _checkpoint(tmp, "bfloat16", layers=4, hidden=512, heads=8, kv_heads=2, intermediate=1024)
    vocab = _vocab(ckpt)
    prompts, eos = _prompts(vocab), vocab - 1
    kernels, portable = ours(ckpt, "bfloat16", prompts, new, eos), ours(ckpt, "bfloat16", prompts, new, eos, True)
    same, firsts = _agreement([t for t, _ in kernels], [t for t, _ in portable])
    lp = max(float(np.max(np.abs(a[1][:f] - b[1][:f]))) if f else 0.0
             for a, b, f in zip(kernels, portable, firsts, strict=True))
    report("engine bf16: GPU kernels vs pure-JAX paths", same >= len(prompts) // 2 and lp < 0.1,
           f"{same}/{len(prompts)} greedy sequences identical (first differences at {firsts}); chosen tokens' "
           f"log-probs differ by at most {lp:.3f} before the first difference")
    same, firsts = _agreement([t for t, _ in kernels], hf(ckpt, "bfloat16", prompts, new, eos))
    print(f"INFO engine bf16 vs HF generate bf16: {same}/{len(prompts)} identical (first differences at {firsts})",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="no GPU: checks 1, 2b, 3, 4 at small sizes, Pallas interpreted")
    args = ap.parse_args()
    platform = jax.devices()[0].platform
    if platform != "gpu" and not args.cpu:
        print(f"no GPU here (JAX sees {platform}); nothing to check")
        return 0
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
    if args.cpu:
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

        pa._gpu_kernel = lambda: functools.partial(paged_attention, interpret=True)
    size = dict(slots=8, max_len=256) if args.cpu else {}
    chunk = dict(chunk=512, ctx=200, interpret=True) if args.cpu else {}
    tmp = tempfile.mkdtemp()
    checks = [functools.partial(check_paged_attention, 2, 14, 64, **size),
              functools.partial(check_paged_attention, 4, 28, 128, **size),
              *([] if args.cpu else [check_cudnn_prefill]),
              functools.partial(check_chunk_attention, **chunk),
              functools.partial(check_engine_float32, tmp), functools.partial(check_engine_bfloat16, tmp)]
    for check in checks:
        try:
            check()
        except Exception:  # one broken check must not hide the others
            name = getattr(check, "func", check).__name__
            report(name, False, traceback.format_exc(limit=3).strip().splitlines()[-1])
            traceback.print_exc()
    print(f"{len(FAILED)} of {len(checks)} checks failed" if FAILED else f"all {len(checks)} checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
