#!/usr/bin/env python
"""Print a markdown table of success rates, one row per rollout results file, or with --paired a seed-by-seed
comparison of two files (per success rule: both succeed, first only, second only, neither, exact McNemar p).

    python scripts/results_table.py runs/architectures/LiftBarrier-rf/*/results*.json
    python scripts/results_table.py "local-separate=runs/a/results.json" "local-shared=runs/b/results.json"
    python scripts/results_table.py --paired "DDPM-10=runs/a/results_ddpm10.json" "DDPM-100=runs/a/results_ddpm100.json"
"""

from __future__ import annotations

import argparse

from rf_dp_agents.rollout.compare import paired_table
from rf_dp_agents.rollout.table import load_results, split_spec, table_of_files


def _paired(specs: list[str]) -> str:
    (label_a, path_a), (label_b, path_b) = (split_spec(spec) for spec in specs)
    names = (str(path_a) if label_a is None else label_a, str(path_b) if label_b is None else label_b)
    return paired_table(load_results(path_a), load_results(path_b), names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files, each PATH or LABEL=PATH")
    parser.add_argument("--paired", action="store_true",
                        help="compare exactly two files seed by seed (McNemar's exact test) instead of the rate table")
    args = parser.parse_args()
    if args.paired and len(args.results) != 2:
        parser.error(f"--paired compares exactly two results files, got {len(args.results)}")
    try:
        print(_paired(args.results) if args.paired else table_of_files(args.results))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
