"""Result tables laid out like the paper's Table 2 (plus API-Bank and ACEBench) and bar charts.

``format_table(results_list)`` gives one Markdown row per model (readable in a terminal too);
``format_categories(results_list)`` one row per model and category with its unparseable outputs
(malformed tool-call markup, empty or garbage text; always counted wrong) apart;
``format_multi_turn_table(results_list)`` gives BFCL multi-turn's row per model beside the
single-turn table, followed by the split its entries came from; ``format_report`` puts the tables
present and the category table together (what ``table.md`` holds and ``tooln1-eval`` prints);
``plot_categories(results_list, path)`` draws accuracy per category, one bar per model.
Accuracies are shown in percent with two decimals; "N/A" where a column was not evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["COLUMNS", "MULTI_TURN_COLUMNS", "table_row", "format_table", "format_multi_turn_table",
           "format_categories", "format_report", "plot_categories"]

# (header, getter over a results dict). Table 2 of the paper: Overall, then Non-Live and Live
# (Simple, Multiple, Parallel, Parallel Multiple, summary); we add the relevance columns and the
# API-Bank / ACEBench accuracies of Figure 3.
COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("Overall", ("summary", "bfcl", "overall")),
    ("NL Simple", ("summary", "bfcl", "non_live_simple")),
    ("NL Multiple", ("categories", "bfcl", "multiple")),
    ("NL Parallel", ("categories", "bfcl", "parallel")),
    ("NL Par.Mult.", ("categories", "bfcl", "parallel_multiple")),
    ("Non-Live", ("summary", "bfcl", "non_live")),
    ("L Simple", ("categories", "bfcl", "live_simple")),
    ("L Multiple", ("categories", "bfcl", "live_multiple")),
    ("L Parallel", ("categories", "bfcl", "live_parallel")),
    ("L Par.Mult.", ("categories", "bfcl", "live_parallel_multiple")),
    ("Live", ("summary", "bfcl", "live")),
    ("Irrel.", ("categories", "bfcl", "irrelevance")),
    ("L Irrel.", ("categories", "bfcl", "live_irrelevance")),
    ("API-Bank L1", ("categories", "apibank", "level-1")),
    ("API-Bank L2", ("categories", "apibank", "level-2")),
    ("ACE Atom", ("summary", "acebench", "atom")),
    ("ACE Single-Turn", ("summary", "acebench", "single_turn")),
]

# BFCL v3 multi-turn: the overall is the mean of the first four; composite is shown when evaluated.
MULTI_TURN_COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("MT Overall", ("summary", "bfcl-multi-turn", "overall")),
    ("MT Base", ("categories", "bfcl-multi-turn", "multi_turn_base")),
    ("MT Miss Func", ("categories", "bfcl-multi-turn", "multi_turn_miss_func")),
    ("MT Miss Param", ("categories", "bfcl-multi-turn", "multi_turn_miss_param")),
    ("MT Long Context", ("categories", "bfcl-multi-turn", "multi_turn_long_context")),
    ("MT Composite", ("categories", "bfcl-multi-turn", "multi_turn_composite")),
]


def _lookup(results: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return node.get("accuracy") if isinstance(node, Mapping) else None


def table_row(results: Mapping[str, Any], columns: Sequence[tuple[str, tuple[str, ...]]] = COLUMNS) -> list[str]:
    """The model name followed by one cell per entry of ``columns`` (default :data:`COLUMNS`)."""
    cells = [str(results.get("model", "model"))]
    for _, path in columns:
        acc = _lookup(results, path)
        cells.append("N/A" if acc is None else f"{100 * acc:.2f}")
    return cells


def _markdown(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Aligned Markdown table: the first ``left`` columns left-aligned, the others right."""
    widths = [max(len(header[j]), *(len(row[j]) for row in rows)) for j in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if j < left else c.rjust(w)  # noqa: E731
                                          for j, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 2)) if j < left else ("-" * (w + 1) + ":") for j, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_table(results_list: Sequence[Mapping[str, Any]], drop_empty: bool = True,
                 columns: Sequence[tuple[str, tuple[str, ...]]] = COLUMNS) -> str:
    """Markdown table, one row per results dict; with ``drop_empty`` columns that are N/A for
    every model are left out (a BFCL-only run shows no API-Bank columns)."""
    header = ["Model"] + [name for name, _ in columns]
    rows = [table_row(r, columns) for r in results_list]
    keep = [0] + [j for j in range(1, len(header))
                  if not drop_empty or any(row[j] != "N/A" for row in rows)]
    return _markdown([header[j] for j in keep], [[row[j] for j in keep] for row in rows])


def format_multi_turn_table(results_list: Sequence[Mapping[str, Any]]) -> str:
    """BFCL multi-turn's table, then one line per model naming the entries its numbers cover
    (the split); "" when no model was evaluated on it."""
    evaluated = [r for r in results_list if r.get("categories", {}).get("bfcl-multi-turn")]
    if not evaluated:
        return ""
    notes = [f"- {r.get('model', 'model')}: {r['summary']['bfcl-multi-turn'].get('split', 'split not recorded')}"
             + (", <think> required in every reply" if r["summary"]["bfcl-multi-turn"].get("require_think") else "")
             for r in evaluated]
    return format_table(evaluated, columns=MULTI_TURN_COLUMNS) + "\n\nBFCL multi-turn entries:\n" + "\n".join(notes)


def format_report(results_list: Sequence[Mapping[str, Any]]) -> str:
    """The single-turn table (when a single-turn benchmark was run), the multi-turn table (when
    BFCL multi-turn was), then the per-category table."""
    single = [r for r in results_list if any(b != "bfcl-multi-turn" for b in r.get("categories", {}))]
    parts = [format_table(single)] if single else []
    parts += [t for t in [format_multi_turn_table(results_list)] if t]
    return "\n\n".join(parts + [format_categories(results_list)])


def format_categories(results_list: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table, one row per model and evaluated category: accuracy, correct/total and
    the unparseable outputs as count and percent of the category ("N/A" in results written
    before they were counted)."""
    header = ["Model", "Benchmark", "Category", "Accuracy", "Correct", "Unparseable"]
    rows = []
    for results in results_list:
        for bench, cats in results.get("categories", {}).items():
            for cat, entry in cats.items():
                n = entry.get("total_count", 0)
                bad = entry.get("unparseable_count")
                rows.append([str(results.get("model", "model")), bench, cat, f"{100 * entry['accuracy']:.2f}",
                             f"{entry.get('correct_count', '?')}/{n}",
                             "N/A" if bad is None else f"{bad} ({100 * bad / n if n else 0.0:.1f}%)"])
    if not rows:
        return "(no evaluated categories)"
    return _markdown(header, rows, left=3)


def plot_categories(results_list: Sequence[Mapping[str, Any]], path: str | Path,
                    title: str = "Accuracy per category") -> Path:
    """Bar chart of every evaluated category's accuracy (%), grouped by benchmark, one bar
    colour per model; saved as PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for results in results_list:
        for bench, cats in results.get("categories", {}).items():
            for cat in cats:
                label = f"{bench}:{cat}"
                if label not in labels:
                    labels.append(label)
    if not labels:
        raise ValueError("no evaluated categories to plot")
    n_models = len(results_list)
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) * max(1, n_models) ** 0.5 + 2), 4.8))
    for m, results in enumerate(results_list):
        values = []
        for label in labels:
            bench, cat = label.split(":", 1)
            entry = results.get("categories", {}).get(bench, {}).get(cat)
            values.append(100 * entry["accuracy"] if entry else 0.0)
        xs = [i + (m - (n_models - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=str(results.get("model", f"model {m}")))
        if n_models == 1:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    if n_models > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
