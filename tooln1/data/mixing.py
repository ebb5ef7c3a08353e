"""Dataset-level transforms: irrelevance augmentation, source mixing, seeded train/val split."""
from __future__ import annotations

import random
from typing import Mapping, Sequence


def add_irrelevance(records: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Append, for a seeded ``fraction`` of single-turn records, a copy whose answer tools are
    removed from the tool list and whose answer is ``[]`` (the model must decline to call).

    Multi-turn records and trajectories are not used (their context or later steps refer to the
    removed tools), nor are records whose answer is already empty or would leave no tool.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"irrelevance fraction {fraction} must be in [0, 1]")
    rng = random.Random(seed)
    extra = []
    for r in records:
        if not r["answer"] or len(r["conversation"]) != 1 or "env" in r or rng.random() >= fraction:
            continue
        used = {c["name"] for c in r["answer"]}
        tools = [t for t in r["tools"] if t["name"] not in used]
        if tools:
            extra.append({**r, "id": f"{r['id']}-irrelevant", "tools": tools, "answer": []})
    return list(records) + extra


def mix(sources: Mapping[str, Sequence[dict]], ratios: Mapping[str, float] | None = None,
        seed: int = 0) -> list[dict]:
    """Combine sources, taking ``ratio × len(source)`` records of each, then shuffle (seeded).

    A ratio below 1 subsamples without replacement; above 1 repeats the source whole
    ``floor(ratio)`` times plus a subsample. Missing ratios are 1.
    """
    ratios = dict(ratios or {})
    unknown = set(ratios) - set(sources)
    if unknown:
        raise ValueError(f"mixing ratios name unknown source(s) {sorted(unknown)}; have {sorted(sources)}")
    rng = random.Random(seed)
    out: list[dict] = []
    for name in sorted(sources):
        records, ratio = list(sources[name]), ratios.get(name, 1.0)
        if ratio < 0:
            raise ValueError(f"mixing ratio for {name!r} is negative ({ratio})")
        whole, part = divmod(ratio, 1.0)
        out.extend(records * int(whole))
        out.extend(rng.sample(records, round(part * len(records))))
    rng.shuffle(out)
    return out


def train_val_split(records: Sequence[dict], val_fraction: float = 0.02, seed: int = 0,
                    val_size: int | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded split; ``val_size`` (a count) overrides ``val_fraction``. Order inside each part is
    the seeded permutation, so the same seed gives the same split whatever the caller does next."""
    n_val = val_size if val_size is not None else round(val_fraction * len(records))
    if not 0 <= n_val <= len(records):
        raise ValueError(f"validation size {n_val} out of range for {len(records)} records")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = [records[i] for i in order[:n_val]]
    train = [records[i] for i in order[n_val:]]
    return train, val
