"""Table 3: training recipes on Qwen2.5-7B-Instruct — SFT, RL, and SFT followed by RL.

Rows: the raw instruct model; No-Reason SFT (targets ``<tool_call>..</tool_call>`` only);
Reason-SFT (``<think>..</think><tool_call>..</tool_call>``); No-Reason SFT -> RL; Reason-SFT -> RL;
RL only (Tool-N1-7B). ``configs/paper.py`` spec key ``recipe``. The paper distilled the reasoning
traces for Reason-SFT from DeepSeek-R1: put them in the ``reasoning`` field of prepared records
(``--set data.sources=prepared:PATH``); records without one get ``sft.think_text`` (docs/training.md).

    python -m experiments.table3_recipes --dry-run
    python -m experiments.table3_recipes --smoke          # smoke: SFT-only, Reason-SFT -> RL and RL rows
"""
from experiments.common import Eval, Experiment, Train, main_for

RECIPES = (
    ("No-Reason SFT", "sft"),
    ("Reason-SFT", "reason-sft"),
    ("No-Reason SFT -> RL", "sft-rl"),
    ("Reason-SFT -> RL", "reason-sft-rl"),
    ("Tool-N1-7B", "rl"),
)
ROWS = (Eval("Qwen2.5-7B-Instruct", "qwen2.5-7b"),) + tuple(
    Eval(label, Train(model="qwen2.5-7b", recipe=recipe)) for label, recipe in RECIPES)

EXPERIMENT = Experiment(
    name="table3",
    title="Table 3: SFT vs RL vs SFT->RL recipes on Qwen2.5-7B-Instruct",
    rows=ROWS,
    smoke_rows=(ROWS[1], ROWS[4], ROWS[5]),
)


def main(argv=None):
    return main_for([EXPERIMENT], argv, __doc__)


if __name__ == "__main__":
    main()
