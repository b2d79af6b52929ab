"""read_ahead: conversion's reader of the next episode, in order, bounded, with errors at their item."""

from __future__ import annotations

import threading

import pytest

from rf_dp_agents.data.readahead import read_ahead


def test_yields_in_order_and_reads_in_the_background() -> None:
    threads: set[str] = set()

    def read(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x * x

    assert list(read_ahead(read, range(7))) == [x * x for x in range(7)]
    assert threads and all(name.startswith("rf-read-ahead") for name in threads)
    assert list(read_ahead(read, [])) == []


@pytest.mark.parametrize("depth", [1, 3])
def test_reads_at_most_depth_items_ahead(depth: int) -> None:
    started: list[int] = []
    results = read_ahead(lambda x: started.append(x) or x, range(10), depth=depth)
    for consumed, value in enumerate(results):
        assert value == consumed
        assert max(started) <= consumed + depth  # never more than depth items beyond the one handed out


def test_an_error_comes_at_its_item() -> None:
    def read(x: int) -> int:
        if x == 3:
            raise ValueError("episode 3 is corrupt")
        return x

    got = []
    with pytest.raises(ValueError, match="episode 3 is corrupt"):
        for value in read_ahead(read, range(6)):
            got.append(value)
    assert got == [0, 1, 2]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        next(read_ahead(read, range(2), depth=0))
