"""How far a QLoRA base (int8 / int4 kernels, `tooln1.models.quantize`) moves a checkpoint's logits.

    python tools/quantization_error.py CHECKPOINT_DIR

Prints, per quantization, the mean and largest absolute logit difference against the unquantized
float32 model, the share of positions whose top-1 token is unchanged, and KL(base || quantized).
"""
from __future__ import annotations

import argparse

import numpy as np

PROMPTS = ("Call the weather tool for Paris and tell me whether I need an umbrella tomorrow morning.",
           '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>')


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    from transformers import AutoTokenizer

    from tooln1.checkpoints.hf_import import load_model
    from tooln1.models.lora import add_adapters

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    rows = [tokenizer.encode(p) for p in PROMPTS]
    n = min(map(len, rows))
    ids = np.asarray([r[:n] for r in rows])
    base = np.asarray(load_model(args.checkpoint)(ids))
    lp_base = log_softmax(base)
    for bits in ("int8", "int4"):
        quantized = np.asarray(add_adapters(load_model(args.checkpoint), rank=1, quantization=bits)(ids))
        diff = np.abs(quantized - base)
        kl = (np.exp(lp_base) * (lp_base - log_softmax(quantized))).sum(-1).mean()
        top1 = (quantized.argmax(-1) == base.argmax(-1)).mean()
        print(f"{bits}: |logit diff| mean {diff.mean():.3f} max {diff.max():.3f} (logit std {base.std():.2f}), "
              f"top-1 kept {top1:.3f}, KL(base||{bits}) {kl:.4f} nats/token ({ids.size} positions)")


if __name__ == "__main__":
    main()
