#!/usr/bin/env python
"""Build the Tool-N1 training set: sources → records → (filter, augment, mix) → train/validation files.

Run it once before training on xLAM / ToolACE (or to fix a mix, a split or a length filter): ``tooln1-train``
then reads the output with ``--config.data.sources=prepared:OUT/train.parquet``. The printed table is the
paper's Table 1 for the sources given.

Example (the paper's mix; hub ids need network, local JSON/JSONL/parquet files work offline)::

    python tools/prepare_data.py --source xlam:Salesforce/xlam-function-calling-60k \\
        --source toolace:Team-ACE/ToolACE --tokenizer Qwen/Qwen2.5-7B-Instruct --out data/tooln1

    python tools/prepare_data.py --source synthetic:5000 --out data/synthetic --format jsonl

    python tools/prepare_data.py --source toolace-trajectories:Team-ACE/ToolACE --out data/toolace-mt

Writes ``OUT/train.<fmt>``, ``OUT/validation.<fmt>`` and ``OUT/stats.json``, and prints a table
like the paper's Table 1 (raw vs kept rows, single vs multi turn, per source) with drop reasons;
``toolace-trajectories:`` keeps multi-step dialogues whole, counted as trajectories (``traj``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tooln1.config import source_kind
from tooln1.data.mixing import add_irrelevance, mix, train_val_split
from tooln1.data.prompt import filter_by_prompt_length, render_prompt
from tooln1.data.records import write_records
from tooln1.data.sources import DROP_REASONS, SourceStats, load_records_with_stats


def _key_values(items: list[str], flag: str) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"{flag} {item!r}: expected NAME=NUMBER")
    return out


def format_table(stats: list[SourceStats]) -> str:
    """Table-1 style summary plus the drop reasons of every source."""
    header = (f"{'source':<22}{'raw':>9}{'single':>9}{'multi':>9} |{'kept':>9}{'single':>9}{'multi':>9}{'traj':>9}"
              f"{'dropped':>9}")
    lines = [f"{'':<22}{' raw rows ':-^27} |{' kept examples ':-^45}",
             header, "-" * len(header)]
    total = SourceStats("total")
    for s in stats:
        total = total.merge(s)
    for s in stats + ([total] if len(stats) > 1 else []):
        lines.append(f"{s.source:<22}{s.raw_rows:>9}{s.raw_single:>9}{s.raw_multi:>9} |{s.kept:>9}"
                     f"{s.kept_single:>9}{s.kept_multi:>9}{s.kept_trajectories:>9}{sum(s.dropped.values()):>9}")
    lines.append("")
    lines.append("drop reasons (rows; unknown_tool counts examples):")
    for s in stats:
        for reason, n in sorted(s.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {s.source:<22}{reason:<22}{n:>8}  {DROP_REASONS.get(reason, '')}")
        if not s.dropped:
            lines.append(f"  {s.source:<22}{'(none)':<22}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" (JAX here)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", action="append", required=True, metavar="KIND:LOCATION",
                   help="xlam:PATH_OR_HUB_ID, toolace:PATH_OR_HUB_ID, toolace-trajectories:PATH_OR_HUB_ID "
                        "(multi-step dialogues whole, for the replay environment), synthetic:N[:SEED], "
                        "synthetic-simple:N[:SEED], synthetic-tiny:N[:SEED] (the quickstart's three "
                        "one-argument tools) or prepared:PATH (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--split", default="train", help="split to read from hub datasets")
    p.add_argument("--ratio", action="append", default=[], metavar="NAME=R",
                   help="mixing ratio per source name (its kind, e.g. xlam=0.5); default 1")
    p.add_argument("--irrelevance", type=float, default=0.0,
                   help="fraction of single-turn examples to copy with their tools removed and answer []")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--val-size", type=int, default=None, help="validation count (overrides --val-fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer for the prompt-length filter and --add-prompt")
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--add-prompt", action="store_true", help="also store the templated prompt column")
    args = p.parse_args(argv)

    t0 = time.time()
    per_source, stats = {}, []
    for spec in args.source:
        kind = source_kind(spec)  # the name --ratio and data.mix_ratios use
        name = kind if kind not in per_source else f"{kind}{sum(k.startswith(kind) for k in per_source) + 1}"
        print(f"[prepare_data] loading {spec} ...", flush=True)
        records, st = load_records_with_stats(spec, args.split)
        st.source = name
        per_source[name] = records
        stats.append(st)
        print(f"[prepare_data]   {name}: {st.raw_rows} rows -> {st.kept} examples ({time.time() - t0:.1f}s)",
              flush=True)

    tokenizer, length_counts = None, {}
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        for name, records in per_source.items():
            per_source[name], length_counts[name] = filter_by_prompt_length(records, tokenizer, args.max_prompt_tokens)
            print(f"[prepare_data]   {name}: {length_counts[name]['prompt_too_long']} prompts longer than "
                  f"{args.max_prompt_tokens} tokens dropped", flush=True)

    if args.irrelevance > 0:
        for name in per_source:
            before = len(per_source[name])
            per_source[name] = add_irrelevance(per_source[name], args.irrelevance, args.seed)
            print(f"[prepare_data]   {name}: +{len(per_source[name]) - before} irrelevance examples", flush=True)

    ratios = _key_values(args.ratio, "--ratio")
    try:
        mixed = mix(per_source, ratios, seed=args.seed)
        train, val = train_val_split(mixed, args.val_fraction, args.seed, args.val_size)
    except ValueError as e:
        raise SystemExit(f"prepare_data: {e}") from None
    if not val:
        print(f"[prepare_data] warning: the validation split is empty ({len(mixed)} examples × --val-fraction "
              f"{args.val_fraction}); pass --val-size N or a larger --val-fraction", file=sys.stderr, flush=True)

    os.makedirs(args.out, exist_ok=True)
    paths = {}
    for split_name, records in (("train", train), ("validation", val)):
        path = os.path.join(args.out, f"{split_name}.{args.format}")
        extra = {"prompt": [render_prompt(r, tokenizer) for r in records]} if (args.add_prompt and tokenizer) else None
        write_records(records, path, extra)
        paths[split_name] = path

    summary = {
        "sources": {s.source: {"raw_rows": s.raw_rows, "raw_single": s.raw_single, "raw_multi": s.raw_multi,
                               "kept_single": s.kept_single, "kept_multi": s.kept_multi,
                               "kept_trajectories": s.kept_trajectories,
                               "dropped": dict(s.dropped)} for s in stats},
        "prompt_length_filter": {"max_tokens": args.max_prompt_tokens, **length_counts} if tokenizer else None,
        "irrelevance_fraction": args.irrelevance, "ratios": ratios, "seed": args.seed,
        "train": len(train), "validation": len(val), "files": paths, "sources_spec": args.source,
    }
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print()
    print(format_table(stats))
    print()
    print(f"[prepare_data] wrote {len(train)} train + {len(val)} validation examples to {args.out} "
          f"({time.time() - t0:.1f}s)")
    return summary


if __name__ == "__main__":
    main()
