"""Figure 4: Tool-N1 across backbone sizes — Qwen2.5-Instruct 0.5B to 14B and Llama-3-8B-Instruct,
each before (instruct model) and after GRPO (binary reward, xLAM + ToolACE).

Besides the table, ``<out>/figure4/sizes.png`` plots accuracy (BFCL overall when all of BFCL was
evaluated, else the mean over the evaluated categories) against the number of parameters.

    python -m experiments.figure4_sizes --dry-run
    python -m experiments.figure4_sizes --smoke          # smoke: two tiny sizes stand in for 0.5B and 7B
    python -m experiments.figure4_sizes --plot a/results.json b/results.json --output sizes.png
"""
from __future__ import annotations

import argparse
import json
import sys

from experiments.common import Eval, Experiment, Train, main_for

# (backbone key, name of the base row, name of the trained row, billions of parameters)
SIZES = (
    ("qwen2.5-0.5b", "Qwen2.5-0.5B-Instruct", "Tool-N1-0.5B", 0.49),
    ("qwen2.5-1.5b", "Qwen2.5-1.5B-Instruct", "Tool-N1-1.5B", 1.54),
    ("qwen2.5-3b", "Qwen2.5-3B-Instruct", "Tool-N1-3B", 3.09),
    ("qwen2.5-7b", "Qwen2.5-7B-Instruct", "Tool-N1-7B", 7.62),
    ("qwen2.5-14b", "Qwen2.5-14B-Instruct", "Tool-N1-14B", 14.7),
    ("llama-3-8b", "Llama-3-8B-Instruct", "Tool-N1-Llama-3-8B", 8.03),
)
BILLIONS = {base: b for _, base, _, b in SIZES} | {n1: b for _, _, n1, b in SIZES}

ROWS = tuple(row for key, base, n1, _ in SIZES for row in (Eval(base, key), Eval(n1, Train(model=key))))

EXPERIMENT = Experiment(
    name="figure4",
    title="Figure 4: instruct backbones vs Tool-N1 across model sizes (Qwen2.5 0.5B-14B, Llama-3-8B)",
    rows=ROWS,
    size_plot=True,
    smoke_rows=(ROWS[0], ROWS[1], ROWS[6], ROWS[7]),
)


def headline(results: dict) -> tuple[float | None, str]:
    """BFCL overall if present, else the mean accuracy over every evaluated category."""
    overall = ((results.get("summary") or {}).get("bfcl") or {}).get("overall")
    if isinstance(overall, dict) and overall.get("accuracy") is not None:
        return overall["accuracy"], "BFCL overall"
    accs = [c["accuracy"] for cats in (results.get("categories") or {}).values() for c in cats.values()]
    return (sum(accs) / len(accs) if accs else None), "mean accuracy over the evaluated categories"


def plot_sizes(result_paths, output: str) -> str:
    """Accuracy against parameters: one line for the instruct models, one for Tool-N1 (Qwen2.5);
    Llama points are drawn separately. Rows whose size is unknown (e.g. the smoke's tiny models)
    are placed by their order in ``SIZES``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {"base": [], "n1": []}
    metric = ""
    for path in result_paths:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        acc, metric = headline(res)
        name = res.get("model", path)
        if acc is None:
            continue
        kind = "n1" if name.startswith("Tool-N1") else "base"
        points[kind].append((BILLIONS.get(name, float(len(points[kind]) + 1)), 100 * acc, name))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, label, marker in (("base", "instruct model", "o"), ("n1", "Tool-N1 (GRPO)", "s")):
        pts = sorted(points[kind])
        qwen = [p for p in pts if "Llama" not in p[2]]
        if qwen:
            ax.plot([p[0] for p in qwen], [p[1] for p in qwen], marker=marker, label=label)
        for x, y, name in pts:
            if "Llama" in name:
                ax.scatter([x], [y], marker="*", s=120, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel(f"{metric} (%)" if metric else "accuracy (%)")
    ax.set_title("Tool-N1 across model sizes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--plot"]:
        ap = argparse.ArgumentParser(prog="figure4_sizes --plot")
        ap.add_argument("--plot", nargs="+", required=True, metavar="RESULTS_JSON")
        ap.add_argument("--output", default="sizes.png")
        args = ap.parse_args(argv)
        print(plot_sizes(args.plot, args.output))
        return None
    return main_for([EXPERIMENT], argv, __doc__)


if __name__ == "__main__":
    main()
