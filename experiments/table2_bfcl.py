"""Table 2: BFCL v3 (plus API-Bank / ACEBench, Figure 3) of the instruct backbones against Tool-N1.

Tool-N1-7B / -14B are GRPO with the binary reward straight from Qwen2.5-7B/14B-Instruct on
xLAM + ToolACE (``configs/paper.py`` defaults, Table 6). The paper reports BFCL overall 84.82
(Tool-N1-7B: non-live 89.25, live 80.38) and 85.97 (Tool-N1-14B). The closed-model rows of the
paper's table (GPT-4o, ...) are not reproduced here.

    python -m experiments.table2_bfcl --dry-run                      # print the commands
    python -m experiments.table2_bfcl --checkpoints /ckpt --mesh gpu8  # run them (resumable)
    python -m experiments.table2_bfcl --smoke                         # CPU smoke on tiny checkpoints
"""
from experiments.common import Eval, Experiment, Train, main_for

N1_7B = Train(model="qwen2.5-7b")
N1_14B = Train(model="qwen2.5-14b")

EXPERIMENT = Experiment(
    name="table2",
    title="Table 2: BFCL v3 of Qwen2.5-Instruct backbones vs Tool-N1 (GRPO, binary reward, xLAM + ToolACE)",
    rows=(
        Eval("Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        Eval("Tool-N1-7B", N1_7B),
        Eval("Qwen2.5-14B-Instruct", "qwen2.5-14b"),
        Eval("Tool-N1-14B", N1_14B),
    ),
    smoke_rows=(Eval("Qwen2.5-7B-Instruct", "qwen2.5-7b"), Eval("Tool-N1-7B", N1_7B)),
)


def main(argv=None):
    return main_for([EXPERIMENT], argv, __doc__)


if __name__ == "__main__":
    main()
