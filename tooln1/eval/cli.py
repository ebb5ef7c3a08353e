"""``tooln1-eval``: evaluate a checkpoint on BFCL v3, API-Bank and ACEBench.

    tooln1-eval --model PATH [--benchmarks bfcl,apibank,acebench] [--categories simple,level-1]
                [--data-dir DIR] [--limit N] [--output DIR] [--batch-size 16] [--max-new-tokens 1024]
    tooln1-eval --model oracle ...          # score the reference answers (checks the pipeline)
    tooln1-eval --model oracle --benchmarks bfcl-multi-turn [--multi-turn-split eval|train|all]
    tooln1-eval --compare a/results.json b/results.json --output DIR   # one table, one chart

Writes DIR/results.json (per-sample prompts, outputs, verdicts), DIR/table.md and
DIR/accuracy.png, and prints the table.

Without --benchmarks, each benchmark whose data is absent is skipped with one line saying where
to get it (BFCL: the nvidia-bfcl package; API-Bank, ACEBench: files under --data-dir); a
benchmark named in --benchmarks or owning a --categories name must have its data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

DEFAULT_BENCHMARKS = "bfcl,apibank,acebench"
DEFAULT_DATA_DIR = os.path.join("..", "shared", "data")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``--help`` lists every flag with its default."""
    doc = __doc__.replace("``", "")
    p = argparse.ArgumentParser(prog="tooln1-eval", description=doc.split("\n\n")[0],
                                epilog="\n\n".join(doc.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF checkpoint directory (e.g. a training run's runs/quickstart/hf_export), "
                                   "or 'oracle' to score the reference answers (required unless --compare)")
    p.add_argument("--name", help="model name shown in the table (default: the model folder's name)")
    p.add_argument("--benchmarks", metavar="LIST",
                   help=f"comma list of bfcl,apibank,acebench (default: {DEFAULT_BENCHMARKS}, skipping those "
                        f"whose data is absent; named here, missing data is an error), or bfcl-multi-turn, "
                        f"run only when named")
    p.add_argument("--categories", metavar="LIST",
                   help="comma list of categories, e.g. simple,live_simple,level-1,atom_bool "
                        "(default: every category of each benchmark)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"folder holding apibank/ and acebench/ (default: {DEFAULT_DATA_DIR}, relative to the "
                        f"working directory); BFCL's data comes from the nvidia-bfcl package")
    p.add_argument("--limit", type=int, metavar="N", help="first N samples of each category (default: all)")
    p.add_argument("--output", default="eval_results", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="prompts generated together (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=1024, metavar="N",
                   help="generation budget per response (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32 on CPU, where XLA's bfloat16 is several times "
                        "slower, else bfloat16)")
    p.add_argument("--compile-cache", default=os.path.join(os.path.expanduser("~"), ".cache", "tooln1", "xla"),
                   metavar="DIR", help="JAX persistent compilation cache, so a repeated evaluation skips "
                                       "compiling; '' turns it off (default: %(default)s)")
    p.add_argument("--apibank-dir", metavar="DIR",
                   help="API-Bank folder, overriding --data-dir (default: DATA_DIR/apibank)")
    p.add_argument("--acebench-dir", metavar="DIR",
                   help="ACEBench folder, overriding --data-dir (default: DATA_DIR/acebench)")
    p.add_argument("--acebench-keep-whitespace", action="store_true",
                   help="do not reproduce ACEBench's whitespace stripping, see docs/evaluation.md (default: off)")
    p.add_argument("--max-turns", type=int, default=24, metavar="N",
                   help="BFCL multi-turn with a checkpoint: replies per episode at most, a cut episode fails "
                        "(default: %(default)s)")
    p.add_argument("--max-trajectory-tokens", type=int, default=4096, metavar="N",
                   help="BFCL multi-turn with a checkpoint: replies and observations after the prompt at most "
                        "(default: %(default)s)")
    p.add_argument("--multi-turn-split", default="eval", choices=["eval", "train", "all"],
                   help="BFCL multi-turn entries to play: the held-out split, the training split or all "
                        "(tooln1.environments.bfcl.split_indices; default: %(default)s)")
    p.add_argument("--require-think", action="store_true",
                   help="BFCL multi-turn: an entry counts only if every reply also holds <think>...</think>, "
                        "the paper's format rule (default: off, BFCL's own verdict)")
    p.add_argument("--compare", nargs="+", metavar="RESULTS_JSON",
                   help="only tabulate/plot existing results.json files together (default: off)")
    return p


def _compare(paths: Sequence[str], output: str) -> int:
    from tooln1.eval import report

    results = []
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"tooln1-eval: results file {path} not found")
        with open(path, encoding="utf-8") as f:
            results.append(json.load(f))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = report.format_report(results)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    report.plot_categories(results, out / "accuracy.png")
    print(table)
    print(f"[eval] wrote {out / 'table.md'} and {out / 'accuracy.png'}")
    return 0


def _data_dirs(args: argparse.Namespace) -> dict[str, str]:
    """API-Bank / ACEBench folders from --data-dir and the per-benchmark overrides; a benchmark
    left out falls back to its module default (../shared/data/<name>)."""
    dirs = {}
    for bench, override in (("apibank", args.apibank_dir), ("acebench", args.acebench_dir)):
        if override:
            dirs[bench] = override
        elif args.data_dir:
            dirs[bench] = os.path.join(args.data_dir, bench)
    return dirs


def _select_benchmarks(args: argparse.Namespace, data_dirs: dict[str, str]) -> list[str]:
    """The requested benchmarks whose data is here; raises FileNotFoundError when a benchmark the
    user named lacks its data or when none is left, and logs one line per benchmark skipped."""
    from tooln1.eval.runner import BENCHMARKS, TITLES, available_benchmarks, route_categories

    named = _csv(args.benchmarks)
    categories = _csv(args.categories)
    requested = list(route_categories(named or list(BENCHMARKS), categories))
    explicit = set(requested) if (named or categories) else set()
    available, missing = available_benchmarks(requested, categories, data_dirs)
    for bench in requested:
        if bench in missing and bench in explicit:
            raise FileNotFoundError(f"{TITLES[bench]} data missing: {missing[bench]}")
    if not available:
        lines = "\n".join(f"  {TITLES[b]}: {missing[b]}" for b in requested)
        raise FileNotFoundError(f"no benchmark data found, nothing to evaluate:\n{lines}")
    for bench in requested:
        if bench in missing:
            print(f"tooln1-eval: skipping {TITLES[bench]}: {missing[bench]}", file=sys.stderr)
    return available


def _oracle(args: argparse.Namespace, benchmarks: list[str], data_dirs: dict) -> dict:
    from tooln1.eval.oracle import oracle_response
    from tooln1.eval.runner import load_benchmarks, score_outputs

    samples = load_benchmarks(benchmarks, _csv(args.categories), args.limit, data_dirs)
    return score_outputs(samples, [oracle_response(s) for s in samples],
                         acebench_strip_whitespace=not args.acebench_keep_whitespace)


def _split_multi_turn(args: argparse.Namespace) -> tuple[bool, list[str] | None, bool]:
    """(whether BFCL multi-turn is requested, its categories or None for its default four, whether
    a single-turn benchmark is); leaves only the single-turn part in ``args.benchmarks`` and
    ``args.categories``."""
    from tooln1.eval.bfcl_multi_turn import BENCHMARK

    named, categories = _csv(args.benchmarks) or [], _csv(args.categories) or []
    mine = [c for c in categories if c.startswith("multi_turn_")]
    single_named = [b for b in named if b != BENCHMARK]
    single_categories = [c for c in categories if c not in mine]
    single = bool(single_named or single_categories or not (named or categories))
    args.benchmarks = ",".join(single_named) or None
    args.categories = ",".join(single_categories) or None
    return BENCHMARK in named or bool(mine), mine or None, single


def _multi_turn(args: argparse.Namespace, categories: list[str] | None) -> dict:
    from tooln1.eval import bfcl_multi_turn

    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    return bfcl_multi_turn.evaluate(bfcl_multi_turn.oracle_policy, categories, split=args.multi_turn_split,
                                    limit=args.limit, require_think=args.require_think, log=log)


def _merge(parts: list[dict]) -> dict:
    return {"categories": {k: v for p in parts for k, v in p["categories"].items()},
            "summary": {k: v for p in parts for k, v in p["summary"].items()},
            "samples": [row for p in parts for row in p["samples"]]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tooln1-eval``; returns the exit status (2 on a usage or data error)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" (JAX here)
    args = build_parser().parse_args(argv)
    if args.compare:
        return _compare(args.compare, args.output)
    if not args.model:
        raise SystemExit("tooln1-eval: --model PATH (or --model oracle, or --compare FILES) is required")
    data_dirs = _data_dirs(args)
    try:
        if args.model != "oracle" and not (Path(args.model) / "config.json").is_file():
            raise SystemExit(f"tooln1-eval: --model {args.model} is not a Hugging Face checkpoint "
                             f"directory (no config.json there)")
        multi_turn, multi_turn_categories, single_turn = _split_multi_turn(args)
        # before loading the model: data errors come fast
        benchmarks = _select_benchmarks(args, data_dirs) if single_turn else []
        if args.model == "oracle":
            parts = [_oracle(args, benchmarks, data_dirs)] if benchmarks else []
            if multi_turn:
                parts.append(_multi_turn(args, multi_turn_categories))
            results = {"model": args.name or "oracle", "settings": {"oracle": True, "limit": args.limit},
                       **_merge(parts)}
            from tooln1.eval.runner import write_results

            write_results(results, args.output)
        else:
            model_dir = Path(args.model)
            from transformers import AutoTokenizer

            import tooln1
            from tooln1.eval.runner import evaluate

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            import jax

            if args.compile_cache:
                jax.config.update("jax_compilation_cache_dir", os.path.abspath(args.compile_cache))
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
            dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
            model = tooln1.load_model(str(model_dir), dtype=dtype)
            name = args.name or model_dir.resolve().name
            parts = []
            if benchmarks:
                parts.append(evaluate(model, tokenizer, benchmarks=benchmarks, categories=_csv(args.categories),
                                      limit=args.limit, batch_size=args.batch_size,
                                      max_new_tokens=args.max_new_tokens, data_dirs=data_dirs,
                                      output_dir=None if multi_turn else args.output, model_name=name,
                                      acebench_strip_whitespace=not args.acebench_keep_whitespace))
            if multi_turn:
                from tooln1.eval import bfcl_multi_turn
                from tooln1.eval.runner import write_results

                parts.append(bfcl_multi_turn.evaluate_model(
                    model, tokenizer, multi_turn_categories, split=args.multi_turn_split, limit=args.limit,
                    require_think=args.require_think, max_new_tokens=args.max_new_tokens,
                    max_turns=args.max_turns, max_tokens=args.max_trajectory_tokens, batch_size=args.batch_size,
                    log=lambda line: print(line, file=sys.stderr)))
            results = parts[0] if len(parts) == 1 and not multi_turn else {"model": name, **_merge(parts)}
            if multi_turn:
                write_results(results, args.output)
    except (FileNotFoundError, ImportError, ValueError) as err:
        print(f"tooln1-eval: error: {err}", file=sys.stderr)
        return 2
    from tooln1.eval import report

    print(report.format_report([results]))
    print(f"[eval] results in {Path(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
