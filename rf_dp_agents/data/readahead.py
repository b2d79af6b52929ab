"""Read the next item while the caller works on the current one: conversion reads episode k+1 from its h5 file (HDF5's
gzip decoding) while the zarr writer compresses episode k (Blosc, in its own threads), instead of one after the other.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(read: Callable[[T], R], items: Iterable[T], depth: int = 1) -> Iterator[R]:
    """``read(item)`` for each item, in order, with up to ``depth`` later items read in a background thread meanwhile.

    An exception from ``read`` is raised when its item's turn comes (the items before it are yielded first); at
    most ``depth + 1`` results are held at any moment. Closing the generator early waits for the read under way.
    """
    if depth < 1:
        raise ValueError(f"read_ahead depth must be >= 1, got {depth}")
    pending: list[Future[R]] = []
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rf-read-ahead") as pool:
        try:
            for item in source:
                pending.append(pool.submit(read, item))
                if len(pending) > depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()


__all__ = ["read_ahead"]
