"""The overlap benchmark's trial (``rf_dp_agents.bench.inference_overlap``) on the CPU with tiny policies: every
chunk asked is served and counted once, in both modes."""

from __future__ import annotations

import pytest

from rf_dp_agents.bench.inference_overlap import OverlapArgs, run_trial


@pytest.mark.parametrize("overlap", [False, True])
def test_trial_serves_and_counts_every_timed_chunk(overlap: bool) -> None:
    args = OverlapArgs(agents=2, workers=2, rounds=3, config="tiny", steps=2, device="cpu")
    out = run_trial(args, overlap=overlap)
    assert out["chunks"] == 12 and out["overlap"] is overlap
    server = out["server"]
    assert server["rows"] == 12  # the untimed first round is not counted
    assert 1 <= server["max_concurrent_calls"] <= (2 if overlap else 1)
    assert 0 < server["busy_seconds"] <= out["wall_seconds"]
