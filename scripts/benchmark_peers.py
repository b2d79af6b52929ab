#!/usr/bin/env python
"""Training peers side by side, each in its own clean process: our default trainer end to end and lerobot's
DiffusionPolicy step at the seed's shapes (with PyTorch's default flags and with TF32 on), at batch 64 and 256.

  python scripts/benchmark_peers.py --output benchmarks/results/peers.json
  python scripts/benchmark_peers.py --batch-sizes 64 --repeats 3 --peers rf_dp_agents lerobot_tf32

Needs a CUDA GPU, and lerobot 0.6.1 importable for its rows (a failing peer is reported, the others still run).
The synthetic seed-size dataset is written to --data when missing (by the first run of our trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rf_dp_agents.bench.peer_runs import PEERS, render, run_peers, summarize

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS), help="peers to run (default all)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256], help="batch sizes (default 64 256)")
    p.add_argument("--repeats", type=int, default=2, help="trials per peer and batch size (default 2)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "bench" / "seed_size.zarr",
                   help="the synthetic seed-size zarr (written when missing)")
    p.add_argument("--output", type=Path, help="also write rows and summary as JSON here")
    args = p.parse_args()
    if args.repeats < 1 or any(b < 1 for b in args.batch_sizes):
        p.error("--repeats and --batch-sizes must be positive")
    return args


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="peers-"))

    def save(rows: list[dict]) -> None:
        """Rows and summary so far to ``--output`` through a temporary name (a run cut short keeps its rows)."""
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.output.with_name(args.output.name + ".tmp")
            doc = {"rows": rows, "summary": {str(k): v for k, v in summarize(rows).items()}}
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, args.output)

    rows = run_peers(ROOT / "scripts" / "benchmark.py", args.peers, args.batch_sizes, args.repeats,
                     args.data.resolve(), work, on_row=save)
    print(render(summarize(rows)))  # --output already holds every row: save() ran after each
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
