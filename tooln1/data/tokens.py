"""Host-side token batches: left padding, length buckets, response decoding and truncation.

The sampler, the trainer and the evaluation all turn lists of token ids into padded ``[B, T]``
arrays and sampled rows back into text; this module is the one implementation of each step.
Prompts are left-padded (the last real token sits at the last position, where decoding starts).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int,
             rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` of shape ``[rows, length]`` (``rows`` defaults to ``len(seqs)``), each sequence
    right-aligned. Rows past ``len(seqs)`` are filler: all pad, with the last position marked real so
    that no attention row is empty. ``ValueError`` names a sequence longer than ``length``."""
    rows = len(seqs) if rows is None else rows
    if rows < len(seqs):
        raise ValueError(f"left_pad: rows={rows} is fewer than the {len(seqs)} sequences")
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than the padded length {length}")
        if len(s):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
    mask[len(seqs):, -1] = 1
    return ids, mask


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= ``n``; beyond the largest, the next multiple of the largest (fewer compiled
    shapes than one per length)."""
    for b in buckets:
        if n <= b:
            return int(b)
    top = int(buckets[-1])
    return top * math.ceil(n / top)


def power_of_two_buckets(lo: int, hi: int) -> tuple[int, ...]:
    """``lo, 2·lo, 4·lo, …`` up to the first value >= ``hi``."""
    out = [lo]
    while out[-1] < hi:
        out.append(out[-1] * 2)
    return tuple(out)


def decode_rows(tokenizer: Any, rows: Sequence[Sequence[int]], eos_ids: Sequence[int],
                skip_special_tokens: bool = False) -> list[str]:
    """Token rows as text, a trailing EOS dropped (as ``generate`` does), special tokens kept by
    default (the reward reads ``<tool_call>`` blocks and the EOS marks)."""
    eos = set(int(e) for e in eos_ids)
    cut = [r[:-1] if r and r[-1] in eos else r for r in (np.asarray(r).tolist() for r in rows)]
    return tokenizer.batch_decode(cut, skip_special_tokens=skip_special_tokens)


def decode_responses(tokenizer: Any, tokens: np.ndarray, mask: np.ndarray, eos_ids: Sequence[int],
                     skip_special_tokens: bool = False) -> list[str]:
    """`decode_rows` of the tokens under ``mask`` of each sampled row."""
    rows = [t[m.astype(bool)] for t, m in zip(np.asarray(tokens), np.asarray(mask))]
    return decode_rows(tokenizer, rows, eos_ids, skip_special_tokens)


def truncated_fraction(tokens: np.ndarray, mask: np.ndarray, eos_ids: Sequence[int]) -> float:
    """Share of sampled rows cut by the token limit: the last slot is a response token and not an EOS
    (a row whose EOS lands in the last slot finished)."""
    last_real = np.asarray(mask)[:, -1] > 0
    return float((last_real & ~np.isin(np.asarray(tokens)[:, -1], list(eos_ids))).mean())


__all__ = ["left_pad", "bucket_length", "power_of_two_buckets", "decode_responses", "decode_rows", "truncated_fraction"]
