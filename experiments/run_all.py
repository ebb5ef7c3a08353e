"""Every paper result in one go: Tables 2-5 and Figure 4 (training runs shared between them run once).

    python -m experiments.run_all --dry-run                            # all commands, full settings
    python -m experiments.run_all --checkpoints /ckpt --mesh gpu8 --xlam /data/xlam.json --toolace /data/toolace.json
    python -m experiments.run_all --smoke                              # CPU smoke of every entry, one process
"""
from experiments import figure4_sizes, table2_bfcl, table3_recipes, table4_reward, table5_data
from experiments.common import main_for

EXPERIMENTS = [m.EXPERIMENT for m in (table2_bfcl, table3_recipes, table4_reward, table5_data, figure4_sizes)]


def main(argv=None):
    return main_for(EXPERIMENTS, argv, __doc__)


if __name__ == "__main__":
    main()
