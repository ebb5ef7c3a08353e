"""Host memory and wall time of importing a sharded HF checkpoint (Qwen2.5-0.5B shape, random weights).

    python tools/bench/import_time.py --workdir /tmp/bench_import [--dtype bfloat16] [--shard-size 200MB]

The checkpoint is written by a separate process (torch is not in the measured process). The import
is measured in a fresh process: peak RSS (ru_maxrss) above the RSS right before `load_model`,
compared with the size on disk, the loaded parameter bytes and the largest single tensor. On the CPU
backend the "device" is host memory, so the loaded parameters themselves count in RSS; the figure
that shows streaming is the transient overhead = peak - before - loaded parameter bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_MEASURE = r"""
import json, os, resource, sys, time
import jax, numpy as np
from flax import nnx
import tooln1
from safetensors import safe_open

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

path, dtype = sys.argv[1], sys.argv[2]
largest = 0
for name in os.listdir(path):
    if name.endswith(".safetensors"):
        with safe_open(os.path.join(path, name), "numpy") as f:
            for key in f.keys():
                s = f.get_slice(key)
                largest = max(largest, int(np.prod(s.get_shape())) * (2 if s.get_dtype() in ("BF16", "F16") else 4))
before = rss()
t = time.perf_counter()
model = tooln1.load_model(path, dtype=dtype)
jax.block_until_ready(nnx.state(model, nnx.Param))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
print(json.dumps(dict(seconds=seconds, rss_before=before, peak=peak, param_bytes=params, largest_tensor=largest)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/tooln1_bench_import")
    parser.add_argument("--dtype", default="bfloat16", help="storage and load dtype")
    parser.add_argument("--shard-size", default="200MB")
    args = parser.parse_args()
    ckpt = os.path.join(args.workdir, f"qwen2.5-0.5b-{args.dtype}")
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
        subprocess.run([sys.executable, "-c",
                        "import sys; from tooln1.checkpoints.tiny import make_tiny_checkpoint as m; "
                        "m(sys.argv[1], shape='qwen2.5-0.5b', dtype=sys.argv[2], shard_size=sys.argv[3])",
                        ckpt, args.dtype, args.shard_size], check=True)
    disk = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt) if f.endswith(".safetensors"))
    shards = sum(f.endswith(".safetensors") for f in os.listdir(ckpt))
    out = subprocess.run([sys.executable, "-c", _MEASURE, ckpt, args.dtype], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2**30
    overhead = r["peak"] - r["rss_before"] - r["param_bytes"]
    print(f"checkpoint: {ckpt} ({shards} safetensors shards, {disk / gib:.3f} GiB on disk, {args.dtype})")
    print(f"load_model wall time:          {r['seconds']:.2f} s")
    print(f"peak RSS above pre-load RSS:   {(r['peak'] - r['rss_before']) / gib:.3f} GiB")
    print(f"  of which loaded parameters:  {r['param_bytes'] / gib:.3f} GiB (CPU backend: device memory is host memory)")
    print(f"  transient overhead:          {overhead / gib:.3f} GiB (largest tensor {r['largest_tensor'] / gib:.3f} GiB)")


if __name__ == "__main__":
    main()
