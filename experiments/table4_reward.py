"""Table 4: reward design ablation on Qwen2.5-7B-Instruct (GRPO, xLAM + ToolACE).

Rows: the binary reward (format and full call match, Tool-N1); partial credit for a correct
format; partial credit for format and function names; the binary reward without the ``<think>``
format requirement. ``configs/paper.py`` spec key ``reward`` (``tooln1.reward.KINDS``; the exact
rules are docs/design.md §7 / ``tooln1/reward.py``).

    python -m experiments.table4_reward --dry-run
    python -m experiments.table4_reward --smoke           # smoke: binary and format_name_partial rows
"""
from experiments.common import Eval, Experiment, Train, main_for

REWARDS = (
    ("Tool-N1-7B", "binary"),
    ("Partial: format", "format_partial"),
    ("Partial: format + name", "format_name_partial"),
    ("Binary, no reason format", "binary_no_think"),
)
ROWS = tuple(Eval(label, Train(model="qwen2.5-7b", reward=kind)) for label, kind in REWARDS)

EXPERIMENT = Experiment(
    name="table4",
    title="Table 4: reward ablation (binary vs partial rewards, reasoning format) on Qwen2.5-7B-Instruct",
    rows=ROWS,
    smoke_rows=(ROWS[0], ROWS[2]),
)


def main(argv=None):
    return main_for([EXPERIMENT], argv, __doc__)


if __name__ == "__main__":
    main()
