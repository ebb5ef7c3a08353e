"""Run benchmarks: load samples -> render prompts -> batched greedy generation -> score -> report.

Generation and scoring are separate steps: :func:`score_outputs` takes responses from anywhere
(our sampler, a file, the oracle), which is how the scoring is tested without a model.
:func:`evaluate` is the library call used by ``tooln1-eval`` and usable inside training::

    from tooln1.eval.runner import evaluate
    results = evaluate(model, tokenizer, benchmarks=["bfcl"], categories=["simple"], limit=50)
    results["summary"]["bfcl"]["overall"]
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tooln1.eval import acebench, apibank, bfcl, report
from tooln1.eval.prompting import render_prompts
from tooln1.eval.samples import EvalSample

__all__ = ["BENCHMARKS", "TITLES", "route_categories", "missing_data", "available_benchmarks", "load_benchmarks",
           "generate_batched", "score_outputs", "evaluate", "write_results"]

BENCHMARKS = {"bfcl": bfcl.CATEGORIES, "apibank": apibank.CATEGORIES, "acebench": acebench.CATEGORIES}
TITLES = {"bfcl": "BFCL", "apibank": "API-Bank", "acebench": "ACEBench"}


def _split_categories(benchmarks: Sequence[str], categories: Iterable[str] | None) -> dict[str, list[str] | None]:
    """Route category names (unique across benchmarks) to their benchmark."""
    unknown_b = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown_b:
        raise ValueError(f"unknown benchmarks {unknown_b}; choose from {list(BENCHMARKS)}")
    if not categories:
        return {b: None for b in benchmarks}
    routed: dict[str, list[str] | None] = {}
    for cat in categories:
        owner = [b for b in benchmarks if cat in BENCHMARKS[b]]
        if not owner:
            known = {b: list(BENCHMARKS[b]) for b in benchmarks}
            raise ValueError(f"category {cat!r} belongs to none of the benchmarks {list(benchmarks)}; known: {known}")
        routed.setdefault(owner[0], []).append(cat)
    return routed


def route_categories(benchmarks: Sequence[str], categories: Iterable[str] | None = None) -> dict[str, list[str] | None]:
    """``{benchmark: its categories among ``categories`` (None = all)}``; with ``categories``
    only the benchmarks owning one of them are kept. Unknown names raise ValueError."""
    return _split_categories(list(benchmarks), categories)


def missing_data(benchmark: str, categories: Iterable[str] | None = None,
                 data_dirs: Mapping[str, str | Path] | None = None) -> str | None:
    """None when ``benchmark``'s data for ``categories`` is here, else one line naming what is
    missing and where to get it."""
    data_dirs = dict(data_dirs or {})
    if benchmark == "bfcl":
        try:
            bfcl.require_checker()
            root = bfcl.data_dir()
        except (bfcl.MissingBFCLError, FileNotFoundError):
            return f"the nvidia-bfcl package (BFCL data and checker) is not installed; {bfcl.INSTALL_HINT}"
        absent = [str(root / f"BFCL_v3_{c}.json") for c in (categories or bfcl.CATEGORIES)
                  if not (root / f"BFCL_v3_{c}.json").is_file()]
        return f"{', '.join(absent)} not found; reinstall: {bfcl.INSTALL_HINT}" if absent else None
    module = {"apibank": apibank, "acebench": acebench}.get(benchmark)
    if module is None:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {list(BENCHMARKS)}")
    root = Path(data_dirs.get(benchmark) or module.DEFAULT_DATA_DIR)
    if not root.is_dir():  # the usual case on a fresh clone: name the folder, not each file
        return f"no folder {root.resolve()}; {module.SOURCE}"
    absent = module.missing_files(categories, root)
    if not absent:
        return None
    shown = ", ".join(map(str, absent[:2])) + (f" and {len(absent) - 2} more" if len(absent) > 2 else "")
    return f"{shown} not found; {module.SOURCE}"


def available_benchmarks(benchmarks: Sequence[str], categories: Iterable[str] | None = None,
                         data_dirs: Mapping[str, str | Path] | None = None) -> tuple[list[str], dict[str, str]]:
    """(the benchmarks among ``benchmarks`` whose data is here, ``{benchmark: why not}`` for
    the others), after routing ``categories`` as :func:`load_benchmarks` does."""
    available, missing = [], {}
    for bench, cats in route_categories(benchmarks, categories).items():
        problem = missing_data(bench, cats, data_dirs)
        if problem is None:
            available.append(bench)
        else:
            missing[bench] = problem
    return available, missing


def load_benchmarks(benchmarks: Sequence[str] = ("bfcl", "apibank", "acebench"),
                    categories: Iterable[str] | None = None, limit: int | None = None,
                    data_dirs: Mapping[str, str | Path] | None = None) -> list[EvalSample]:
    """Samples of the chosen benchmarks / categories (``limit`` per category).

    ``data_dirs`` maps "apibank" / "acebench" to their folders (default ``../shared/data/<name>``
    relative to the working directory); BFCL data comes from the ``bfcl`` package.
    """
    data_dirs = dict(data_dirs or {})
    samples: list[EvalSample] = []
    for bench, cats in _split_categories(list(benchmarks), categories).items():
        if bench == "bfcl":
            bfcl.require_checker()  # fail before any generation when the checker is missing
            samples += bfcl.load_samples(cats, limit)
        elif bench == "apibank":
            samples += apibank.load_samples(cats, limit, data_dirs.get("apibank"))
        else:
            samples += acebench.load_samples(cats, limit, data_dirs.get("acebench"))
    return samples


def _default_generate() -> Callable[..., list[list[str]]]:
    import tooln1

    return tooln1.generate


def generate_batched(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                     max_new_tokens: int = 1024, generate_fn: Callable[..., list[list[str]]] | None = None,
                     log: Callable[[str], None] | None = print) -> list[str]:
    """Greedy responses for ``prompts`` (in their order), generated in batches of similar length
    (sorted by token count, so little padding) with progress and tokens/s logged."""
    generate_fn = generate_fn or _default_generate()
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    outputs: list[str | None] = [None] * len(prompts)
    start, new_tokens = time.perf_counter(), 0
    n_batches = (len(order) + batch_size - 1) // batch_size
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        batch = generate_fn(model, tokenizer, [prompts[i] for i in idx], n=1,
                            max_new_tokens=max_new_tokens, temperature=0.0)
        if len(batch) != len(idx):
            raise RuntimeError(f"generate returned {len(batch)} results for {len(idx)} prompts")
        for i, responses in zip(idx, batch):
            outputs[i] = responses[0]
        new_tokens += sum(len(t) for t in tokenizer([r[0] for r in batch], add_special_tokens=False)["input_ids"])
        if log is not None:
            elapsed = time.perf_counter() - start
            log(f"[eval] batch {b + 1}/{n_batches}  samples {min((b + 1) * batch_size, len(order))}/{len(order)}"
                f"  prompt len ≤{lengths[idx[-1]]}  {new_tokens / max(elapsed, 1e-9):.1f} new tok/s  {elapsed:.0f}s")
    return [o if o is not None else "" for o in outputs]


def _score_one(sample: EvalSample, response: str, acebench_strip_whitespace: bool):
    if sample.benchmark == "bfcl":
        return bfcl.score(sample, response)
    if sample.benchmark == "apibank":
        return apibank.score(sample, response)
    return acebench.score(sample, response, strip_whitespace=acebench_strip_whitespace)


def score_outputs(samples: Sequence[EvalSample], outputs: Sequence[str], prompts: Sequence[str] | None = None,
                  acebench_strip_whitespace: bool = True) -> dict[str, Any]:
    """Score ``outputs[i]`` against ``samples[i]``: per-sample verdicts, per-category accuracy
    and unparseable share, and the benchmark summaries (BFCL non-live/live/overall, ACEBench
    atom/single-turn)."""
    if len(samples) != len(outputs):
        raise ValueError(f"{len(samples)} samples but {len(outputs)} outputs")
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    rows = []
    for i, (sample, response) in enumerate(zip(samples, outputs)):
        verdict = _score_one(sample, response, acebench_strip_whitespace)
        counts[sample.benchmark][sample.category][0] += int(verdict.valid)
        counts[sample.benchmark][sample.category][1] += 1
        counts[sample.benchmark][sample.category][2] += int(verdict.unparseable)
        rows.append({"benchmark": sample.benchmark, "category": sample.category, "id": sample.id,
                     "prompt": prompts[i] if prompts is not None else None, "output": response,
                     **verdict.to_json()})
    categories = {
        bench: {cat: {"accuracy": c / n, "correct_count": c, "total_count": n,
                      "unparseable": u / n, "unparseable_count": u} for cat, (c, n, u) in cats.items()}
        for bench, cats in counts.items()
    }
    summary: dict[str, Any] = {}
    if "bfcl" in categories:
        summary["bfcl"] = bfcl.summarize(categories["bfcl"])
    if "apibank" in categories:
        summary["apibank"] = {cat: categories["apibank"].get(cat) for cat in apibank.CATEGORIES}
    if "acebench" in categories:
        summary["acebench"] = acebench.summarize(categories["acebench"])
    return {"categories": categories, "summary": summary, "samples": rows}


def write_results(results: Mapping[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """``results.json`` (everything, per-sample prompts/outputs/verdicts), ``table.md`` (the
    paper-style table, then the per-category one with unparseable outputs) and ``accuracy.png``
    under ``output_dir``; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "table": out / "table.md", "chart": out / "accuracy.png"}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    paths["table"].write_text(report.format_report([results]) + "\n", encoding="utf-8")
    report.plot_categories([results], paths["chart"])
    return paths


def evaluate(model: Any, tokenizer: Any, benchmarks: Sequence[str] = ("bfcl", "apibank", "acebench"),
             categories: Iterable[str] | None = None, limit: int | None = None, batch_size: int = 16,
             max_new_tokens: int = 1024, data_dirs: Mapping[str, str | Path] | None = None,
             output_dir: str | Path | None = None, model_name: str = "model",
             acebench_strip_whitespace: bool = True,
             generate_fn: Callable[..., list[list[str]]] | None = None,
             log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Evaluate ``model`` on the benchmarks with the paper's prompt and greedy decoding.

    ``generate_fn(model, tokenizer, prompts, n=1, max_new_tokens=..., temperature=0.0)`` defaults
    to ``tooln1.generate``. Returns ``{"model", "settings", "categories", "summary", "samples"}``;
    with ``output_dir`` also writes results.json, table.md and accuracy.png there.
    """
    samples = load_benchmarks(benchmarks, categories, limit, data_dirs)
    if not samples:
        raise ValueError("no evaluation samples selected")
    prompts = render_prompts([s.record for s in samples], tokenizer)
    if log is not None:
        log(f"[eval] {len(samples)} samples from {list(benchmarks)}; generating (greedy, ≤{max_new_tokens} new tokens)")
    outputs = generate_batched(model, tokenizer, prompts, batch_size, max_new_tokens, generate_fn, log)
    results = score_outputs(samples, outputs, prompts, acebench_strip_whitespace)
    results = {"model": model_name,
               "settings": {"benchmarks": list(benchmarks), "categories": list(categories) if categories else None,
                            "limit": limit, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                            "temperature": 0.0, "acebench_strip_whitespace": acebench_strip_whitespace},
               **results}
    if output_dir is not None:
        paths = write_results(results, output_dir)
        if log is not None:
            log(f"[eval] wrote {', '.join(str(p) for p in paths.values())}")
    return results
