"""Table 5: training data composition on Qwen2.5-7B-Instruct (GRPO, binary reward).

Rows: xLAM only; ToolACE only; xLAM + ToolACE (Tool-N1). ``configs/paper.py`` spec key ``data``;
sources with ``--xlam`` / ``--toolace`` (local files or hub ids); a custom mix of a
``tools/prepare_data.py`` output is ``--set data.sources=prepared:PATH``.

    python -m experiments.table5_data --dry-run
    python -m experiments.table5_data --smoke             # smoke: xLAM-only and mixed rows
"""
from experiments.common import Eval, Experiment, Train, main_for

MIXES = (
    ("xLAM only", "xlam"),
    ("ToolACE only", "toolace"),
    ("Tool-N1-7B", "xlam+toolace"),
)
ROWS = tuple(Eval(label, Train(model="qwen2.5-7b", data=data)) for label, data in MIXES)

EXPERIMENT = Experiment(
    name="table5",
    title="Table 5: data composition (xLAM, ToolACE, both) on Qwen2.5-7B-Instruct",
    rows=ROWS,
    smoke_rows=(ROWS[0], ROWS[2]),
)


def main(argv=None):
    return main_for([EXPERIMENT], argv, __doc__)


if __name__ == "__main__":
    main()
