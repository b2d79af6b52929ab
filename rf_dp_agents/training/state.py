"""Resume state on disk without pickle, and crash-safe snapshot directories.

A snapshot is a directory holding the checkpoint the policy loads (``config.json`` + ``model.safetensors``,
EMA weights) and, for ``last``, the training state: ``training_state.safetensors`` (raw weights, optimiser
tensors, RNG states) and ``training_state.json`` (epoch, step, scheduler, optimiser structure, counters).
Nested Python state (optimiser and scheduler state dicts, RNG states) is split by :func:`flatten` into
tensors and a JSON tree that points at them, so loading runs no code.

Snapshots live in ``<run>/snapshots/<name>``; ``<run>/last`` and ``<run>/best`` are relative symlinks
switched with one atomic rename, so a SIGKILL at any moment leaves the previous or the new snapshot in place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_FORMAT_VERSION = 1
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
SNAPSHOT_DIR = "snapshots"


class CheckpointError(RuntimeError):
    """A checkpoint or resume state is missing, corrupt or does not match the run; the message names the file."""


# ---- flattening nested state into tensors + JSON ---------------------------------------------------------


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON tree of ``obj``; tensors and arrays are moved into ``tensors`` under keys starting with ``prefix``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        stored = obj.astype(np.int64) if obj.dtype.kind in "ui" else obj  # safetensors lacks unsigned wide ints
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(stored))
        return {"__ndarray__": prefix, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"cannot store state key {key!r} of type {type(key).__name__} at {prefix}")
            items.append([key, flatten(value, f"{prefix}.{key}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store state value of type {type(obj).__name__} at {prefix}")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
        if "__dict__" in tree:
            return {key: unflatten(value, tensors) for key, value in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        raise CheckpointError(f"unknown node in the stored state: keys {sorted(tree)}")
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


# ---- RNG states -------------------------------------------------------------------------------------------


def capture_rng(device: torch.device) -> dict[str, Any]:
    """torch (CPU), CUDA (this process's device), numpy and Python RNG states."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].astype(np.uint32), *np_state[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8), device)


# ---- files ------------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary name and a rename."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_training_state(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``training_state.safetensors`` and ``training_state.json`` into ``directory``."""
    tensor_path = directory / STATE_TENSORS
    tmp = tensor_path.with_name(f"{tensor_path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp))
    _fsync_file(tmp)
    os.replace(tmp, tensor_path)
    write_json_atomic(directory / STATE_JSON, {"format_version": STATE_FORMAT_VERSION, **meta})


def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the pair written by :func:`save_training_state`; any defect is a :class:`CheckpointError`."""
    tensor_path, json_path = directory / STATE_TENSORS, directory / STATE_JSON
    for path in (tensor_path, json_path):
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} is missing (the snapshot is incomplete)")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot resume: {json_path} is not valid JSON ({exc})") from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"cannot resume: {json_path} has format_version {version!r}, expected {STATE_FORMAT_VERSION}"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: {tensor_path} is corrupt ({exc})") from exc
    return tensors, meta


def load_weights(path: Path, module: torch.nn.Module, prefix: str = "") -> None:
    """Load ``path`` (safetensors) into ``module`` strictly; keys under ``prefix`` only when one is given."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: {path} is corrupt ({exc})") from exc
    load_state_strict(path, module, tensors, prefix)


def load_state_strict(path: Path, module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Copy ``tensors`` (keys ``prefix + name``) into ``module``; missing, extra or mis-shaped keys are an error."""
    own = module.state_dict()
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"cannot resume: {path} does not match the model: {len(missing)} missing tensors {missing[:5]}, "
            f"{len(unexpected)} unexpected tensors {unexpected[:5]}"
        )
    for name, value in got.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"cannot resume: {path}: tensor {prefix}{name} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[name].shape)}"
            )
    module.load_state_dict(got, strict=True)


# ---- snapshot directories and the last/best links --------------------------------------------------------


def write_snapshot(run_dir: Path, link_name: str, tag: str, fill: Callable[[Path], None]) -> Path:
    """Build a snapshot with ``fill(tmp_dir)`` (which creates that directory), rename it into ``snapshots/``,
    then point ``run_dir/link_name`` at it.

    Older snapshots that neither ``last`` nor ``best`` points at are removed afterwards.
    """
    snapshots = run_dir / SNAPSHOT_DIR
    snapshots.mkdir(parents=True, exist_ok=True)
    tmp = snapshots / f".{tag}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    fill(tmp)
    if not tmp.is_dir():
        raise RuntimeError(f"snapshot {tag}: the writer did not create {tmp}")
    final = snapshots / tag
    n = 1
    while final.exists():
        final = snapshots / f"{tag}-{n}"
        n += 1
    os.replace(tmp, final)
    point_link(run_dir / link_name, Path(SNAPSHOT_DIR) / final.name)
    prune_snapshots(run_dir)
    return final


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (relative) with an atomic rename; a real directory there is moved aside."""
    if link.exists() and not link.is_symlink():
        aside = link.parent / SNAPSHOT_DIR / f"{link.name}-moved-{os.getpid()}"
        os.replace(link, aside)
    tmp = link.with_name(f".{link.name}.link-tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def prune_snapshots(run_dir: Path) -> None:
    """Delete snapshots (and leftover temporaries) that ``last`` and ``best`` do not point at."""
    snapshots = run_dir / SNAPSHOT_DIR
    keep = set()
    for name in ("last", "best"):
        link = run_dir / name
        if link.is_symlink():
            keep.add(Path(os.readlink(link)).name)
    for entry in snapshots.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


__all__ = [
    "CheckpointError",
    "STATE_JSON",
    "STATE_TENSORS",
    "capture_rng",
    "flatten",
    "load_state_strict",
    "load_training_state",
    "load_weights",
    "point_link",
    "prune_snapshots",
    "restore_rng",
    "save_training_state",
    "unflatten",
    "write_json_atomic",
    "write_snapshot",
]
