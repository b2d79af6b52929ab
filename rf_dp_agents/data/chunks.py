"""Chunk-level integrity of a zarr store: where a chunk lives, whether it is still there, whether its bytes are whole.

zarr reads a missing chunk as its fill value and numcodecs' Blosc decoder does not check the length of what it is
given (a chunk cut short may decode from whatever memory follows it), so these checks name the chunk at fault
before or after zarr decodes it.
"""

from __future__ import annotations

import contextlib
import itertools
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from rf_dp_agents.data.errors import DatasetError

BLOSC_HEADER_BYTES = 16
"""Blosc's chunk header: version, flags, type size, then the uncompressed, block and compressed sizes (int32 LE)."""


def store_keys(where: str, prefix: str) -> list[str]:
    """Keys of the store at ``where`` (a directory or a zip file) under ``prefix``, relative to it."""
    base = Path(where)
    prefix = prefix.strip("/")
    if base.is_file():
        with zipfile.ZipFile(base) as zf:
            head = f"{prefix}/" if prefix else ""
            return [n[len(head):] for n in zf.namelist() if n.startswith(head) and not n.endswith("/")]
    root = base / prefix
    return [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()] if root.is_dir() else []


def chunk_file(arr: zarr.Array, coords: tuple[int, ...], where: str) -> str:
    """Where chunk ``coords`` of ``arr`` lives: a file of a directory store, or a member of a zip store."""
    key = f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
    return f"{key} inside {where}" if Path(where).is_file() else str(Path(where) / key)


def chunk_label(arr: zarr.Array, coords: tuple[int, ...], where: str) -> str:
    """``<where>: array <path>: chunk <coords> (<file>, steps <lo>..<hi>)``, the start of every chunk error."""
    lo = coords[0] * int(arr.chunks[0]) if arr.ndim else 0
    hi = min(lo + int(arr.chunks[0]), int(arr.shape[0])) if arr.ndim else 0
    return f"{where}: array {arr.path}: chunk {coords} ({chunk_file(arr, coords, where)}, steps {lo}..{hi - 1})"


def _rows_touched(selection: Any, n: int) -> range:
    """The rows of axis 0 that ``selection`` touches (all rows unless it starts with a slice or an int)."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if isinstance(first, slice):
        return range(*first.indices(n))
    if isinstance(first, (int, np.integer)):
        row = int(first) % n if n else 0
        return range(row, row + 1)
    return range(n)


def bad_chunk(arr: zarr.Array, selection: Any, where: str, exc: Exception) -> DatasetError:
    """A :class:`DatasetError` naming the first chunk of ``arr`` under ``selection`` that fails to decode."""
    for coords in chunks_under(arr, selection):
        region = tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, arr.chunks))
        try:
            arr[region]
        except Exception as chunk_exc:  # noqa: BLE001  (any codec failure means this chunk is bad)
            return DatasetError(
                f"{chunk_label(arr, coords, where)} cannot be decoded: the file is truncated or corrupt "
                f"({type(chunk_exc).__name__}: {chunk_exc})"
            )
    return DatasetError(f"{where}: array {arr.path} cannot be read ({type(exc).__name__}: {exc})")


def check_chunks_present(arr: zarr.Array, where: str) -> None:
    """A store written with every chunk on disk must still hold them all: zarr would read a deleted chunk as
    zeros, silently."""
    if arr.nchunks_initialized >= arr.nchunks:
        return
    present = set(store_keys(where, arr.path))
    for coords in itertools.product(*(range(int(n)) for n in arr.cdata_shape)):
        if arr.metadata.encode_chunk_key(coords) not in present:
            raise DatasetError(
                f"{chunk_label(arr, coords, where)} is missing: the store was written with every chunk on disk ({arr.nchunks_initialized} of "
                f"{arr.nchunks} remain), so the file was deleted or the copy is incomplete"
            )


def _is_blosc(codec: Any) -> bool:
    """True for numcodecs' ``Blosc`` (zarr format 2) and zarr's ``BloscCodec`` (format 3)."""
    return type(codec).__name__ in ("Blosc", "BloscCodec")


def blosc_stored(arr: zarr.Array) -> bool:
    """True when the bytes of each stored chunk of ``arr`` are one Blosc frame (Blosc is its last codec, no shards)."""
    compressors = tuple(getattr(arr, "compressors", ()) or ())
    return bool(compressors) and _is_blosc(compressors[-1]) and getattr(arr, "shards", None) is None


def _chunk_head(base: Path, zf: zipfile.ZipFile | None, key: str) -> tuple[int, bytes] | None:
    """Size and Blosc header bytes of the chunk stored under ``key`` (None when the chunk is not stored)."""
    if zf is not None:
        try:
            info = zf.getinfo(key)
        except KeyError:
            return None
        with zf.open(info) as fh:
            return info.file_size, fh.read(BLOSC_HEADER_BYTES)
    path = base / key
    try:
        with open(path, "rb") as fh:
            return path.stat().st_size, fh.read(BLOSC_HEADER_BYTES)
    except FileNotFoundError:
        return None


def chunks_under(arr: zarr.Array, selection: Any) -> Iterable[tuple[int, ...]]:
    """The grid coordinates of the chunks of ``arr`` that ``selection`` reads (every chunk of the rows it touches)."""
    rows = _rows_touched(selection, int(arr.shape[0]) if arr.ndim else 0)
    if not arr.ndim or not len(rows):
        return iter(())
    step = int(arr.chunks[0])
    grid = [range(min(rows) // step, max(rows) // step + 1)] + [range(int(n)) for n in arr.cdata_shape[1:]]
    return itertools.product(*grid)


def check_blosc_lengths(arr: zarr.Array, coords: Iterable[tuple[int, ...]], where: str) -> None:
    """Every stored chunk among ``coords`` holds as many bytes as its Blosc header says it compressed to."""
    coords = list(coords)
    if not coords:
        return
    base = Path(where)
    with zipfile.ZipFile(base) if base.is_file() else contextlib.nullcontext() as zf:
        for c in coords:
            head = _chunk_head(base, zf, f"{arr.path}/{arr.metadata.encode_chunk_key(c)}")
            if head is None:
                continue  # an unwritten chunk: its fill value, or a missing one that check_chunks_present names
            size, header = head
            expected = int.from_bytes(header[12:16], "little") if len(header) == BLOSC_HEADER_BYTES else None
            if expected is None or size < expected:
                said = f"its Blosc header says {expected}" if expected is not None else "shorter than a Blosc header"
                raise DatasetError(
                    f"{chunk_label(arr, c, where)} cannot be decoded: the file is truncated or corrupt "
                    f"(it holds {size} bytes, {said})"
                )


__all__ = [
    "bad_chunk",
    "blosc_stored",
    "check_blosc_lengths",
    "check_chunks_present",
    "chunk_file",
    "chunk_label",
    "chunks_under",
    "store_keys",
]
