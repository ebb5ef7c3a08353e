#!/usr/bin/env python
"""Host memory and wall time of importing a sharded HF checkpoint (Qwen2.5-0.5B shape, random weights).

    python tools/bench/import_time.py --workdir /tmp/bench_import [--dtype bfloat16] [--shard-size 200MB]

The checkpoint is written by this process; the import is measured in a fresh one (torch is not in it):
peak RSS (ru_maxrss) above the RSS right before `load_model`, compared with the size on disk, the loaded
parameter bytes and the largest single tensor. On the CPU backend the "device" is host memory, so the
loaded parameters themselves count in RSS; the figure that shows streaming is the transient overhead =
peak - before - loaded parameter bytes.
"""
from __future__ import annotations

import os

import common


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def measure(ckpt: str, dtype: str) -> dict:
    """The child's side: import ``ckpt`` and report what it cost."""
    import time

    import jax
    import numpy as np
    from flax import nnx
    from safetensors import safe_open

    import tooln1

    largest = 0
    for name in os.listdir(ckpt):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(ckpt, name), "numpy") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    size = 2 if s.get_dtype() in ("BF16", "F16") else 4
                    largest = max(largest, int(np.prod(s.get_shape())) * size)
    before = _rss()
    t = time.perf_counter()
    model = tooln1.load_model(ckpt, dtype=dtype)
    jax.block_until_ready(nnx.state(model, nnx.Param))
    seconds = time.perf_counter() - t
    params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return dict(seconds=seconds, rss_before=before, param_bytes=params, largest_tensor=largest)


def main() -> None:
    ap = common.parser(__doc__, child=True)
    ap.add_argument("--ckpt", default=None, help="the HF checkpoint to import (default: a random one, written once)")
    ap.add_argument("--workdir", default=os.path.join(common.CACHE, "import"), help="where the random one goes")
    ap.add_argument("--dtype", default="bfloat16", help="storage and load dtype")
    ap.add_argument("--shard-size", default="200MB", help="the random checkpoint's safetensors shard size")
    args = ap.parse_args()
    if args.result:
        common.write_result(args.result, measure(args.ckpt, args.dtype))
        return
    ckpt = args.ckpt or common.checkpoint(args.workdir, shape="qwen2.5-0.5b", dtype=args.dtype,
                                          shard_size=args.shard_size)
    r = common.run_child([__file__, "--ckpt", ckpt, "--dtype", args.dtype])
    if "error" in r:
        raise SystemExit(f"the import failed: {r['error']}")
    files = [f for f in os.listdir(ckpt) if f.endswith(".safetensors")]
    disk = sum(os.path.getsize(os.path.join(ckpt, f)) for f in files)
    gib, peak = 2**30, r["peak_rss_mb"] * 2**20
    overhead = peak - r["rss_before"] - r["param_bytes"]
    print(f"checkpoint: {ckpt} ({len(files)} safetensors shards, {disk / gib:.3f} GiB on disk, {args.dtype})")
    print(f"load_model wall time:          {r['seconds']:.2f} s")
    print(f"peak RSS above pre-load RSS:   {(peak - r['rss_before']) / gib:.3f} GiB")
    print(f"  of which loaded parameters:  {r['param_bytes'] / gib:.3f} GiB "
          "(CPU backend: device memory is host memory)")
    print(f"  transient overhead:          {overhead / gib:.3f} GiB "
          f"(largest tensor {r['largest_tensor'] / gib:.3f} GiB)")


if __name__ == "__main__":
    main()
