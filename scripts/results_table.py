#!/usr/bin/env python
"""Print a markdown table of success rates, one row per rollout results file.

    python scripts/results_table.py runs/architectures/LiftBarrier-rf/*/results*.json
    python scripts/results_table.py "local-separate=runs/a/results.json" "local-shared=runs/b/results.json"
"""

from __future__ import annotations

import argparse

from rf_dp_agents.rollout.table import table_of_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files, each PATH or LABEL=PATH")
    args = parser.parse_args()
    try:
        print(table_of_files(args.results))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
