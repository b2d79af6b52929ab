"""Read-only access to a Diffusion Policy zarr dataset: ``data/<key>`` arrays plus ``meta/episode_ends``.

Reads zarr format 2 (as zarr 2.x and RoboFactory's converter write it, Blosc zstd) and format 3, from a
directory store or a ``.zarr.zip`` file. Every structural problem is a :class:`DatasetError` that names
the file, the key and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import zarr
import zarr.errors
from zarr.storage import ZipStore

from rf_dp_agents.data.chunks import (
    bad_chunk,
    blosc_stored,
    check_blosc_lengths,
    check_chunks_present,
    chunks_under,
    store_keys,
)
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.writer import EVERY_CHUNK_STORED

IMAGE_KEYS = ("img", "head_camera")
"""Accepted names of the camera image array, in order of preference (RoboFactory's files use ``head_camera``)."""


def open_zarr_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a zarr group from a directory or a ``.zarr.zip`` file, with a clear error when it is not one."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    try:
        if path.is_file():
            if path.suffix != ".zip":
                raise DatasetError(f"{path}: not a zarr store (expected a directory or a .zarr.zip file)")
            return zarr.open_group(ZipStore(path, mode="r"), mode="r")
        return zarr.open_group(str(path), mode=mode)
    except DatasetError:
        raise
    except (zarr.errors.GroupNotFoundError, FileNotFoundError, KeyError, ValueError, OSError) as exc:
        found = [m for m in (".zgroup", "zarr.json") if (path / m).is_file()]
        named = f" (its {found[0]} cannot be read)" if found else ""
        raise DatasetError(f"{path}: not a zarr store{named} ({type(exc).__name__}: {exc})") from exc


def _node(parent: zarr.Group, name: str, where: str) -> zarr.Group | zarr.Array | None:
    """Member ``name`` of ``parent`` (None when absent); metadata that does not parse is a :class:`DatasetError`
    naming the member."""
    full = f"{parent.path}/{name}".strip("/")
    try:
        return parent[name] if name in _child_names(where, parent) else None
    except Exception as exc:  # noqa: BLE001  (zarr raises JSONDecodeError, ValueError, TypeError, ... here)
        own = set(store_keys(where, full))
        files = [f"{full}/{m}" for m in (".zarray", ".zgroup", "zarr.json") if m in own] or [f"{full}/"]
        raise DatasetError(
            f"{where}: the zarr metadata of {full} ({', '.join(files)}) cannot be read: the file is truncated or "
            f"corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def _child_names(where: str, group: zarr.Group) -> list[str]:
    """Names of the members of ``group``, read from the store listing (no member metadata is parsed)."""
    base = Path(where)
    if base.is_file():
        return sorted({key.split("/")[0] for key in store_keys(where, group.path) if "/" in key})
    folder = base / group.path
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_array(
    arr: zarr.Array | np.ndarray, selection: Any = Ellipsis, where: str = "<memory>", checked: set | None = None
) -> np.ndarray:
    """``arr[selection]`` as numpy; a chunk that is cut short or does not decode is a :class:`DatasetError` naming
    the file ``where``, the array and the chunk. ``checked`` keeps the coordinates of chunks already checked."""
    if isinstance(arr, np.ndarray):
        return arr[selection]
    if blosc_stored(arr):
        todo = [c for c in chunks_under(arr, selection) if checked is None or c not in checked]
        check_blosc_lengths(arr, todo, where)
        if checked is not None:
            checked.update(todo)
    try:
        return np.asarray(arr[selection])
    except Exception as exc:  # noqa: BLE001  (codec errors come as RuntimeError, ValueError, ...)
        raise bad_chunk(arr, selection, where, exc) from exc


class LazyArray:
    """A zarr array read on indexing (``ReplayBuffer.open(in_memory=False)``); decoding errors name the chunk."""

    def __init__(self, arr: zarr.Array, where: str) -> None:
        self.array, self.where = arr, where
        self._checked: set[tuple[int, ...]] = set()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stored array."""
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        """Element type of the stored array."""
        return self.array.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.array.ndim

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, selection: Any) -> np.ndarray:
        return read_array(self.array, selection, self.where, self._checked)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def validate_episode_ends(ends: np.ndarray, n_steps: int, where: str) -> np.ndarray:
    """Check that ``ends`` is a 1-D, strictly increasing int array ending at ``n_steps``; return it as int64."""
    ends = np.asarray(ends)
    if ends.ndim != 1:
        raise DatasetError(f"{where}: meta/episode_ends must be 1-D, got shape {ends.shape}")
    if ends.size == 0:
        raise DatasetError(f"{where}: meta/episode_ends is empty (the dataset has no episodes)")
    if not np.issubdtype(ends.dtype, np.integer):
        raise DatasetError(f"{where}: meta/episode_ends must hold integers, got dtype {ends.dtype}")
    ends = ends.astype(np.int64)
    if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        bad = int(np.argmax(np.diff(np.concatenate([[0], ends])) <= 0))
        raise DatasetError(
            f"{where}: meta/episode_ends must be strictly increasing and positive; "
            f"entry {bad} is {ends[bad]} after {0 if bad == 0 else ends[bad - 1]}"
        )
    if ends[-1] != n_steps:
        raise DatasetError(
            f"{where}: meta/episode_ends ends at {ends[-1]} but the data arrays hold {n_steps} steps"
        )
    return ends


class ReplayBuffer:
    """Episodes stored back to back: ``buffer[key]`` is the (N, ...) array, ``episode_ends`` the cumulative ends.

    Build one with :meth:`open` (from a zarr file) or directly from in-memory arrays. The camera array is
    exposed as ``"img"`` whichever accepted name (``img`` or ``head_camera``) it has on disk, in (N, C, H, W);
    further cameras are arrays named ``img_<camera>`` (``img_head_camera_global``).
    """

    def __init__(self, data: Mapping[str, np.ndarray | LazyArray], episode_ends: np.ndarray, source: str = "<memory>"):
        self.source = source
        if not data:
            raise DatasetError(f"{source}: no arrays under data/")
        lengths = {key: int(arr.shape[0]) for key, arr in data.items()}
        n_steps = next(iter(lengths.values()))
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"{source}: data arrays disagree in length: {lengths}")
        if n_steps == 0:
            raise DatasetError(f"{source}: the dataset is empty (0 steps)")
        self.episode_ends = validate_episode_ends(episode_ends, n_steps, source)
        self._data = dict(data)

    @classmethod
    def open(
        cls,
        path: str | Path,
        keys: Iterable[str] | None = None,
        in_memory: bool = True,
        image_key: str | None = None,
        required: Iterable[str] = ("img", "state", "action"),
    ) -> "ReplayBuffer":
        """Open a dataset; ``in_memory`` loads every array into RAM, else arrays are read lazily per episode.

        ``keys`` limits which arrays are exposed (canonical names, e.g. ``("img", "action")``);
        ``image_key`` forces the on-disk camera array name; ``required`` lists keys that must exist.
        """
        where = str(path)
        root = open_zarr_group(path)
        group = _node(root, "data", where)
        if not isinstance(group, zarr.Group):
            raise DatasetError(f"{where}: missing group 'data' (expected data/<key> arrays)")
        meta = _node(root, "meta", where)
        ends_array = _node(meta, "episode_ends", where) if isinstance(meta, zarr.Group) else None
        if not isinstance(ends_array, zarr.Array):
            raise DatasetError(f"{where}: missing array 'meta/episode_ends'")
        members = {name: _node(group, name, where) for name in _child_names(where, group)}
        stored = {name: arr for name, arr in members.items() if isinstance(arr, zarr.Array)}
        cam = image_key or next((k for k in IMAGE_KEYS if k in stored), None)
        if image_key is not None and image_key not in stored:
            raise DatasetError(f"{where}: missing array 'data/{image_key}' (has {sorted(stored)})")
        mapping = {("img" if name == cam else name): name for name in stored}
        wanted = list(keys) if keys is not None else list(mapping)
        missing = [k for k in set(wanted) | set(required) if k not in mapping]
        if missing:
            names = [f"data/{k}" if k != "img" else "data/img (or data/head_camera)" for k in sorted(missing)]
            raise DatasetError(f"{where}: missing array {', '.join(names)} (has {sorted(stored)})")
        arrays: dict[str, np.ndarray | LazyArray] = {}
        every_chunk_stored = bool(root.attrs.get(EVERY_CHUNK_STORED, False))
        for key in wanted:
            arr = stored[mapping[key]]
            _check_array(key, mapping[key], arr, where)
            if every_chunk_stored:
                check_chunks_present(arr, where)
            if key.startswith("img") and arr.shape[-1] == 3 and arr.shape[1] != 3:
                # (N, H, W, 3) on disk: loaded and exposed channel-first.
                arrays[key] = np.ascontiguousarray(np.moveaxis(read_array(arr, ..., where), -1, 1))
            else:
                arrays[key] = read_array(arr, ..., where) if in_memory else LazyArray(arr, where)
        ends = read_array(ends_array, ..., where)
        return cls(arrays, ends, source=where)

    @property
    def keys(self) -> list[str]:
        """Names of the exposed arrays."""
        return list(self._data)

    @property
    def n_steps(self) -> int:
        """Total number of steps over all episodes."""
        return int(self.episode_ends[-1])

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_ends.shape[0])

    @property
    def episode_lengths(self) -> np.ndarray:
        """Length of each episode, int64 (n_episodes,)."""
        return np.diff(np.concatenate([[0], self.episode_ends]))

    def __getitem__(self, key: str) -> np.ndarray | LazyArray:
        if key not in self._data:
            raise KeyError(f"{self.source}: no array {key!r}; has {self.keys}")
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def episode_slice(self, index: int) -> slice:
        """The [start, end) step range of episode ``index``."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"{self.source}: episode {index} out of range (0..{self.n_episodes - 1})")
        index %= self.n_episodes
        start = 0 if index == 0 else int(self.episode_ends[index - 1])
        return slice(start, int(self.episode_ends[index]))

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of one episode as numpy arrays (reads only that episode from disk when not in memory)."""
        sl = self.episode_slice(index)
        return {key: np.asarray(self[key][sl]) for key in (keys or self.keys)}


def _check_array(key: str, stored_name: str, arr: zarr.Array, where: str) -> None:
    if key.startswith("img"):
        if arr.dtype != np.uint8 or arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
            raise DatasetError(
                f"{where}: data/{stored_name} must be uint8 (N, 3, H, W), got {arr.dtype} {tuple(arr.shape)}"
            )
    elif key in ("state", "action"):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise DatasetError(
                f"{where}: data/{stored_name} must be float (N, D), got {arr.dtype} {tuple(arr.shape)}"
            )


__all__ = ["IMAGE_KEYS", "LazyArray", "ReplayBuffer", "open_zarr_group", "read_array", "validate_episode_ends"]
