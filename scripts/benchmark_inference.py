"""Shared inference with and without --overlap-agents, without a simulator: chunks per second of K policies served
to N client threads, each mode in fresh processes, alternating (``rf_dp_agents.bench.inference_overlap``).

  python scripts/benchmark_inference.py --agents 3 --workers 8 --output benchmarks/results/inference_overlap.json
  python scripts/benchmark_inference.py --config tiny --device cpu --agents 2 --workers 2 --rounds 3   # smoke run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rf_dp_agents.bench.inference_overlap import OverlapArgs, run_parent, run_trial  # noqa: E402


def main() -> int:
    """CLI entry point."""
    args = tyro.cli(OverlapArgs)
    if args.trial is not None:
        print(json.dumps(run_trial(args, overlap=args.trial == "on")))
        return 0
    run_parent(args, Path(__file__).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
