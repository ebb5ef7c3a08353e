#!/usr/bin/env python
"""Write a tiny random Qwen2 / Llama checkpoint in the real Hugging Face layout.

Run it when you need a checkpoint without the hub: to try ``tooln1-train`` / ``tooln1-eval`` /
``tooln1-convert`` end to end, or a model of a real model's shape (``--shape``) to size a run. A thin
command-line front end over ``tooln1.checkpoints.tiny.make_tiny_checkpoint`` (see there for details).

    python tools/make_tiny_checkpoint.py /tmp/tiny                       # 2-layer Qwen2, tied, fp32
    python tools/make_tiny_checkpoint.py /tmp/tiny-llama --arch llama --shard-size 100KB
    python tools/make_tiny_checkpoint.py /tmp/tiny-b --untied --nonzero-biases --seed 3
    python tools/make_tiny_checkpoint.py /tmp/q05 --shape qwen2.5-0.5b --dtype bfloat16
"""
import argparse
import os

from tooln1.checkpoints.tiny import SHAPES, make_tiny_checkpoint


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="named shape; qwen2.5-0.5b is the full 0.5B shape with the real vocab size 151936")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab-size", type=int, help="default: the tiny tokenizer's size (or the shape's)")
    tie = ap.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None)
    tie.add_argument("--untied", dest="tied", action="store_false")
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--nonzero-biases", action="store_true",
                    help="random non-zero q/k/v biases (Qwen2 inits them to 0)")
    ap.add_argument("--random-norms", action="store_true", help="RMSNorm weights 1 + N(0, 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", help="e.g. 200KB, 500MB: sharded safetensors + index")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    a = ap.parse_args(argv)
    path = make_tiny_checkpoint(
        a.out_dir, arch=a.arch, shape=a.shape, layers=a.layers, hidden=a.hidden, heads=a.heads,
        kv_heads=a.kv_heads, intermediate=a.intermediate, vocab_size=a.vocab_size, tied=a.tied,
        rope_theta=a.rope_theta, init_std=a.init_std, nonzero_biases=a.nonzero_biases,
        random_norms=a.random_norms, seed=a.seed, shard_size=a.shard_size, dtype=a.dtype)
    print(f"wrote {path}: {', '.join(sorted(os.listdir(path)))}")


if __name__ == "__main__":
    main()
