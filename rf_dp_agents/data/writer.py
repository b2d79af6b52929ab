"""Append-only writer of Diffusion Policy zarr datasets, crash-safe by temporary name and rename.

``ZarrWriter`` creates ``data/<key>`` arrays on the first episode, appends each later episode, and keeps
``meta/episode_ends`` current. Images are chunked by time (about 2 MB per chunk) and everything is
compressed with Blosc zstd. The store is built under ``<name>.tmp-<pid>`` and renamed to the final path on
:meth:`close`; an exception inside the ``with`` block removes the temporary store, so a half dataset never
appears under the final name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Mapping

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from rf_dp_agents.data.errors import DatasetError

IMAGE_CHUNK_BYTES = 2 * 1024 * 1024
LOWDIM_CHUNK_STEPS = 10_000
EVERY_CHUNK_STORED = "every_chunk_stored"
"""Root attribute of a finished store: every chunk of every array is on disk, all-zero ones included."""


def time_chunk_length(step_shape: tuple[int, ...], itemsize: int, target_bytes: int = IMAGE_CHUNK_BYTES) -> int:
    """Number of time steps per chunk so one chunk holds about ``target_bytes``."""
    per_step = int(np.prod(step_shape, dtype=np.int64)) * itemsize
    return max(1, target_bytes // max(per_step, 1))


class ZarrWriter:
    """Write episodes to a new zarr dataset at ``path`` (a directory; it must not exist unless ``overwrite``)."""

    def __init__(
        self,
        path: str | Path,
        zarr_format: Literal[2, 3] = 3,
        overwrite: bool = False,
        attributes: Mapping[str, object] | None = None,
        clevel: int = 3,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: already exists (pass overwrite=True to replace it)")
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if self.tmp_path.exists():
            shutil.rmtree(self.tmp_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.zarr_format = zarr_format
        self.clevel = clevel
        self._root = zarr.open_group(str(self.tmp_path), mode="w", zarr_format=zarr_format)
        if attributes:
            self._root.attrs.update(dict(attributes))
        self._data = self._root.create_group("data")
        self._meta = self._root.create_group("meta")
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._arrays: dict[str, zarr.Array] = {}  # as created: their config writes all-zero chunks too
        self._ends: list[int] = []
        self._closed = False

    @property
    def n_episodes(self) -> int:
        """Episodes written so far."""
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        """Steps written so far."""
        return self._ends[-1] if self._ends else 0

    def _compression(self) -> dict[str, object]:
        if self.zarr_format == 2:
            return {"compressors": numcodecs.Blosc(cname="zstd", clevel=self.clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)}
        return {"compressors": BloscCodec(cname="zstd", clevel=self.clevel, shuffle="bitshuffle")}

    def _create(self, key: str, value: np.ndarray) -> None:
        step_shape = value.shape[1:]
        if value.dtype == np.uint8 and value.ndim >= 3:
            length = time_chunk_length(step_shape, value.dtype.itemsize)
        else:
            length = LOWDIM_CHUNK_STEPS
        self._arrays[key] = self._data.create_array(
            key, shape=(0, *step_shape), chunks=(length, *step_shape), dtype=value.dtype,
            config={"write_empty_chunks": True}, **self._compression()
        )
        self._spec[key] = (step_shape, value.dtype)

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode: every array has the same leading length L >= 1, the same keys as earlier episodes."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        arrays = {key: np.asarray(value) for key, value in episode.items()}
        where = f"{self.path} episode {self.n_episodes}"
        if not arrays:
            raise DatasetError(f"{where}: empty episode dict")
        lengths = {key: (arr.shape[0] if arr.ndim else 0) for key, arr in arrays.items()}
        if len(set(lengths.values())) != 1 or next(iter(lengths.values())) == 0:
            raise DatasetError(f"{where}: arrays must share a leading length >= 1, got {lengths}")
        if self._spec and set(arrays) != set(self._spec):
            raise DatasetError(f"{where}: keys {sorted(arrays)} differ from earlier episodes' {sorted(self._spec)}")
        for key, arr in arrays.items():
            if key not in self._spec:
                self._create(key, arr)
            step_shape, dtype = self._spec[key]
            if arr.shape[1:] != step_shape or arr.dtype != dtype:
                raise DatasetError(
                    f"{where}: key {key!r} has {arr.dtype} {arr.shape[1:]} per step, expected {dtype} {step_shape}"
                )
        start = self.n_steps
        end = start + next(iter(lengths.values()))
        for key, arr in arrays.items():
            target = self._arrays[key]
            target.resize((end, *target.shape[1:]))
            target[start:end] = arr
        self._ends.append(end)

    def close(self) -> Path:
        """Write ``meta/episode_ends`` and move the finished store to its final path; returns that path."""
        if self._closed:
            return self.path
        if not self._ends:
            self.abort()
            raise DatasetError(f"{self.path}: no episodes were added; nothing written")
        self._meta.create_array(
            "episode_ends", data=np.asarray(self._ends, dtype=np.int64), chunks=(max(len(self._ends), 1),)
        )
        # Every chunk is on disk (empty ones too), so a reader can tell a deleted chunk from a zero-filled one.
        self._root.attrs[EVERY_CHUNK_STORED] = True
        self._closed = True
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self.tmp_path, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written; the final path is left untouched."""
        self._closed = True
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> "ZarrWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["EVERY_CHUNK_STORED", "IMAGE_CHUNK_BYTES", "ZarrWriter", "time_chunk_length"]
