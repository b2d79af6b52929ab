"""Demonstration h5 files (ManiSkill-style layout) and their conversion to one zarr dataset per agent.

Layout of one demonstration file (``demos/<task>/<name>.h5``, written by ``envs.demo_io``); an episode of
``L`` env steps is the group ``traj_<k>`` holding::

    actions/<agent>                      float32 (L, 8)      7 joint targets + gripper command
    obs/agent/<agent>/qpos               float32 (L+1, 9)    measured joints (+ both fingers)
    obs/agent/<agent>/state              float32 (L+1, 8)    7 arm joints + gripper opening (the policy state)
    obs/sensor_data/<camera>/rgb         uint8   (L+1, H, W, 3)
    success, success_strict (optional)   bool    (L,)

with attributes ``seed``, ``elapsed_steps``, ``agents`` and ``cameras`` (JSON lists) on the group. Step ``t``
pairs observation ``t`` with action ``t``; the observation after the last action is dropped on conversion.

This module owns the layout (``envs.demo_io`` writes it with the keys defined here): the library reads demos
without a simulator, and ``envs`` cannot be imported without one.

This module reads that layout (h5py only; no simulator) and streams it, one episode at a time, through
:class:`~rf_dp_agents.data.writer.ZarrWriter`. Any structural problem is a
:class:`~rf_dp_agents.data.errors.DatasetError` naming the file, the episode and the key, raised before a
dataset appears under its final name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

import h5py
import numpy as np

from rf_dp_agents.architecture import (
    DEFAULT_ARCHITECTURE,
    GLOBAL_CAMERA,
    RECORD_KEY,
    Architecture,
    ArchitectureRecord,
    make_record,
    own_camera as agent_camera,
)
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.readahead import read_ahead
from rf_dp_agents.data.writer import ZarrWriter
from rf_dp_agents.progress import progress_bar

TRAJ_PREFIX = "traj_"
ACTION_DIM = 8
STATE_DIM = 8
StateSource = Literal["measured", "action"]


def action_key(agent: str) -> str:
    """h5 key of an agent's actions inside an episode group."""
    return f"actions/{agent}"


def qpos_key(agent: str) -> str:
    """h5 key of an agent's measured joint positions."""
    return f"obs/agent/{agent}/qpos"


def state_key(agent: str) -> str:
    """h5 key of an agent's policy state (7 arm joints + gripper opening)."""
    return f"obs/agent/{agent}/state"


def rgb_key(camera: str) -> str:
    """h5 key of a camera's RGB frames."""
    return f"obs/sensor_data/{camera}/rgb"


def zarr_name(task: str, agent_id: int, n_episodes: int) -> str:
    """File name of an agent's local-view dataset: ``<task>_Agent<i>_<n>.zarr`` (RoboFactory's naming)."""
    return Architecture().zarr_name(task, n_episodes, agent_id)


@dataclass(frozen=True)
class EpisodeRef:
    """One episode: the h5 file and the ``traj_<k>`` group inside it."""

    path: Path
    traj: str

    def __str__(self) -> str:
        return f"{self.path}:{self.traj}"


def _traj_index(name: str) -> int:
    match = re.fullmatch(rf"{TRAJ_PREFIX}(\d+)", name)
    return int(match.group(1)) if match else -1


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the h5 file (truncated or not HDF5): {exc}") from exc


def list_episodes(sources: str | Path | Iterable[str | Path]) -> list[EpisodeRef]:
    """Episodes of a directory of ``*.h5`` files (sorted by name) or of the given files, in order."""
    if isinstance(sources, (str, Path)) and Path(sources).is_dir():
        files = sorted(Path(sources).glob("*.h5"))
        if not files:
            raise DatasetError(f"{sources}: no .h5 demonstration files")
    elif isinstance(sources, (str, Path)):
        files = [Path(sources)]
    else:
        files = [Path(s) for s in sources]
    refs: list[EpisodeRef] = []
    for path in files:
        if not path.is_file():
            raise DatasetError(f"{path}: no such demonstration file")
        with _open(path) as f:
            trajs = sorted((k for k in f.keys() if _traj_index(k) >= 0), key=_traj_index)
        if not trajs:
            raise DatasetError(f"{path}: holds no '{TRAJ_PREFIX}<k>' episode groups")
        refs.extend(EpisodeRef(path, t) for t in trajs)
    return refs


def _json_attr(group: h5py.Group, name: str, where: str) -> list[str]:
    if name not in group.attrs:
        raise DatasetError(f"{where}: attribute {name!r} missing")
    try:
        value = json.loads(group.attrs[name])
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: attribute {name!r} is not a JSON list ({exc})") from exc
    return [str(v) for v in value]


def episode_agents(ref: EpisodeRef) -> list[str]:
    """Agent keys recorded in an episode, in agent-id order."""
    with _open(ref.path) as f:
        if ref.traj not in f:
            raise DatasetError(f"episode {ref}: group {ref.traj!r} missing")
        return _json_attr(f[ref.traj], "agents", f"episode {ref}")


def read_actions(ref: EpisodeRef) -> list[dict[str, np.ndarray]]:
    """The per-step action dicts (agent key -> (8,)) of an episode, for open-loop replay."""
    agents = episode_agents(ref)
    with h5py.File(ref.path, "r") as f:
        per_agent = {key: f[ref.traj][action_key(key)][()] for key in agents}
    length = len(next(iter(per_agent.values())))
    return [{key: per_agent[key][t] for key in agents} for t in range(length)]


def read_seed(ref: EpisodeRef) -> int:
    """The env seed an episode was recorded from."""
    with h5py.File(ref.path, "r") as f:
        return int(f[ref.traj].attrs["seed"])


def _dataset(group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    try:
        node = group[key]
    except KeyError:
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        have = sorted(group[parent].keys()) if parent and parent in group else sorted(group.keys())
        raise DatasetError(f"{where}: key {key!r} missing (found {have})") from None
    except OSError as exc:
        raise DatasetError(f"{where}: key {key!r} cannot be read (truncated file?): {exc}") from exc
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(f"{where}: key {key!r} is a group, expected an array")
    return node


def _read(ds: h5py.Dataset, where: str, key: str) -> np.ndarray:
    try:
        return ds[()]
    except OSError as exc:
        raise DatasetError(f"{where}: key {key!r} cannot be read (truncated file?): {exc}") from exc


def read_agent_episode(
    ref: EpisodeRef,
    agent_id: int,
    state_source: StateSource = "measured",
    camera: str | None = None,
    extra_cameras: Sequence[str] = (),
    shapes_only: bool = False,
    cameras: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray | tuple[int, ...]]:
    """One agent's training arrays of an episode: ``img`` (L,3,H,W) uint8, ``state`` (L,8), ``action`` (L,8).

    ``camera`` defaults to the agent's head camera; each of ``extra_cameras`` adds ``img_<camera>``.
    ``cameras`` (array key -> env camera) replaces both: exactly those images are read (none for ``{}``).
    With ``shapes_only`` the arrays are checked but not read, and their shapes are returned instead.
    """
    if state_source not in ("measured", "action"):
        raise ValueError(f"state_source must be 'measured' or 'action', got {state_source!r}")
    where = f"episode {ref}"
    with _open(ref.path) as f:
        if ref.traj not in f:
            raise DatasetError(f"{where}: group {ref.traj!r} missing")
        group = f[ref.traj]
        agents = _json_attr(group, "agents", where)
        if not 0 <= agent_id < len(agents):
            raise DatasetError(f"{where}: agent {agent_id} missing (the episode has agents {agents})")
        agent = agents[agent_id]
        if cameras is None:
            cameras = {"img": camera or agent_camera(agent_id), **{f"img_{extra}": extra for extra in extra_cameras}}
        keys = {"action": action_key(agent)}
        if state_source == "measured":
            keys["state"] = state_key(agent)
        for name, cam in cameras.items():
            keys[name] = rgb_key(cam)
        datasets = {name: _dataset(group, key, where) for name, key in keys.items()}

        act = datasets["action"]
        if act.ndim != 2 or act.shape[1] != ACTION_DIM or act.shape[0] < 1:
            raise DatasetError(f"{where}: key {keys['action']!r} has shape {act.shape}, expected (L>=1, {ACTION_DIM})")
        length = act.shape[0]
        for name, ds in datasets.items():
            if name == "action":
                continue
            if ds.shape[0] not in (length, length + 1):
                raise DatasetError(
                    f"{where}: key {keys[name]!r} has {ds.shape[0]} steps but {keys['action']!r} has {length} "
                    f"(expected {length} or {length + 1})"
                )
            if name == "state" and (ds.ndim != 2 or ds.shape[1] != STATE_DIM):
                raise DatasetError(f"{where}: key {keys[name]!r} has shape {ds.shape}, expected (L, {STATE_DIM})")
            if name.startswith("img") and (ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8):
                raise DatasetError(
                    f"{where}: key {keys[name]!r} has {ds.dtype} {ds.shape}, expected uint8 (L, H, W, 3)"
                )
        if shapes_only:
            out: dict[str, np.ndarray | tuple[int, ...]] = {
                name: (length, *ds.shape[1:]) for name, ds in datasets.items()
            }
            if state_source == "action":
                out["state"] = (length, ACTION_DIM)
            return out
        arrays = {name: _read(ds, where, keys[name])[:length] for name, ds in datasets.items()}
    result: dict[str, np.ndarray | tuple[int, ...]] = {"action": arrays["action"].astype(np.float32)}
    if state_source == "action":
        result["state"] = arrays["action"].astype(np.float32).copy()
    else:
        result["state"] = arrays["state"].astype(np.float32)
    for name, arr in arrays.items():
        if name.startswith("img"):
            result[name] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    for name, arr in result.items():
        if name != "img" and not name.startswith("img") and not np.all(np.isfinite(arr)):
            raise DatasetError(f"{where}: {name} of agent {agent} holds NaN or inf")
    return result


def iter_agent_episodes(
    refs: Sequence[EpisodeRef], agent_id: int, **kwargs
) -> Iterator[dict[str, np.ndarray]]:
    """Yield :func:`read_agent_episode` for each episode in turn (one episode in memory at a time)."""
    for ref in refs:
        yield read_agent_episode(ref, agent_id, **kwargs)  # type: ignore[misc]


def _check_image_shapes(refs: Sequence[EpisodeRef], read_shapes) -> None:
    """Every camera of every episode gives one (3, H, W); the first that differs is named."""
    image_shape = None
    for ref in refs:
        for name, shape in read_shapes(ref).items():
            if not name.startswith("img"):
                continue
            if image_shape is None:
                image_shape = shape[1:]
            elif shape[1:] != image_shape:
                raise DatasetError(f"episode {ref}: camera {name!r} image shape {shape[1:]} differs from {image_shape}")


def _attributes(refs: Sequence[EpisodeRef], record: ArchitectureRecord, state_source: str) -> dict:
    return {
        "state_source": state_source,
        "state_definition": "action" if state_source == "action" else "qpos[:7] + gripper opening (qpos[7]+qpos[8])",
        "episodes": [str(r) for r in refs],
        RECORD_KEY: record.to_dict(),
    }


def convert_agent(
    refs: Sequence[EpisodeRef],
    out_path: str | Path,
    agent_id: int,
    state_source: StateSource = "measured",
    include_global_camera: bool = False,
    camera: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    architecture: str = DEFAULT_ARCHITECTURE,
) -> Path:
    """Write agent ``agent_id``'s episodes to a zarr dataset at ``out_path``; returns the path.

    Every episode's keys and lengths are checked first, then episodes are streamed one at a time. The
    dataset holds ``img`` (the agent's own camera, or ``camera``) for the local view, ``img_head_camera_global``
    for the global view or with ``include_global_camera``, ``state``, ``action`` and ``meta/episode_ends``, and
    the architecture record in its attributes; nothing appears at ``out_path`` if any episode is bad.
    """
    if not refs:
        raise DatasetError(f"{out_path}: no episodes to convert")
    arch = Architecture(architecture, include_global_camera)
    if arch.shared:
        raise ValueError(f"{arch.name} is one dataset for every agent: use convert_shared")
    agents = episode_agents(refs[0])
    if not 0 <= agent_id < len(agents):
        raise DatasetError(f"episode {refs[0]}: agent {agent_id} missing (the episode has agents {agents})")
    record = make_record(arch, agents, agent_id)
    cameras = dict(record.cameras)
    if camera is not None and "img" in cameras:
        cameras["img"] = camera
        record = dataclasses.replace(record, cameras=cameras)
    options = dict(state_source=state_source, cameras=cameras)
    _check_image_shapes(refs, lambda ref: read_agent_episode(ref, agent_id, shapes_only=True, **options))
    attributes = {
        "agent_id": agent_id,
        "agent": agents[agent_id],
        "camera": cameras.get("img", GLOBAL_CAMERA),
        **_attributes(refs, record, state_source),
    }
    read = functools.partial(read_agent_episode, agent_id=agent_id, **options)  # type: ignore[arg-type]
    return _write_episodes(refs, read, Path(out_path), f"agent {agent_id}", attributes, overwrite, progress)


def _write_episodes(refs: Sequence[EpisodeRef], read: Callable[[EpisodeRef], dict[str, np.ndarray]], out_path: Path,
                    label: str, attributes: dict, overwrite: bool, progress: bool) -> Path:
    """Write ``read(ref)`` of every episode to a zarr dataset at ``out_path`` (episode k+1 is read while episode k
    is compressed and written); nothing appears at ``out_path`` if one fails."""
    episodes = progress_bar(read_ahead(read, refs), total=len(refs), desc=f"{label} -> {out_path.name}", unit="ep",
                    disable=not progress)
    with ZarrWriter(out_path, overwrite=overwrite, attributes=attributes) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    return out_path


def read_shared_episode(
    ref: EpisodeRef, record: ArchitectureRecord, state_source: StateSource = "measured", shapes_only: bool = False
) -> dict[str, np.ndarray | tuple[int, ...]]:
    """A shared model's arrays of an episode: each camera of ``record`` (L,3,H,W), and ``state`` and ``action``
    (L, 8 * agents), every agent's :func:`read_agent_episode` arrays concatenated in agent order."""
    agents = episode_agents(ref)
    if tuple(agents) != tuple(record.agents):
        raise DatasetError(f"episode {ref}: agents {agents} differ from the dataset's {list(record.agents)}")
    parts = [
        read_agent_episode(ref, i, state_source, cameras=record.cameras if i == 0 else {}, shapes_only=shapes_only)
        for i in range(len(agents))
    ]
    lengths = {agents[i]: (part["action"][0] if shapes_only else len(part["action"])) for i, part in enumerate(parts)}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"episode {ref}: the agents' action lengths differ: {lengths}")
    out = {name: value for name, value in parts[0].items() if name.startswith("img")}
    for name in ("state", "action"):
        if shapes_only:
            out[name] = (parts[0][name][0], sum(p[name][1] for p in parts))  # type: ignore[index]
        else:
            out[name] = np.concatenate([p[name] for p in parts], axis=1)  # type: ignore[misc]
    return out


def convert_shared(
    refs: Sequence[EpisodeRef],
    out_path: str | Path,
    architecture: str = "local-shared",
    include_global_camera: bool = False,
    state_source: StateSource = "measured",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the one dataset of a shared policy (``local-shared`` or ``global-shared``) at ``out_path``.

    ``data/state`` and ``data/action`` are (N, 8 * agents): every agent's arrays concatenated in agent order (equal
    to the per-agent datasets side by side); the cameras are ``img_head_camera_agent<i>`` for every agent (local) or
    ``img_head_camera_global`` (global, or added by ``include_global_camera``). Checked and written like
    :func:`convert_agent`.
    """
    if not refs:
        raise DatasetError(f"{out_path}: no episodes to convert")
    arch = Architecture(architecture, include_global_camera)
    if not arch.shared:
        raise ValueError(f"{arch.name} is one dataset per agent: use convert_agent")
    record = make_record(arch, episode_agents(refs[0]))
    _check_image_shapes(refs, lambda ref: read_shared_episode(ref, record, state_source, shapes_only=True))
    attributes = {"agents": list(record.agents), **_attributes(refs, record, state_source)}
    read = functools.partial(read_shared_episode, record=record, state_source=state_source)
    return _write_episodes(refs, read, Path(out_path), arch.label, attributes, overwrite, progress)


__all__ = [
    "EpisodeRef",
    "GLOBAL_CAMERA",
    "action_key",
    "qpos_key",
    "state_key",
    "rgb_key",
    "agent_camera",
    "zarr_name",
    "list_episodes",
    "episode_agents",
    "read_actions",
    "read_seed",
    "read_agent_episode",
    "iter_agent_episodes",
    "convert_agent",
    "convert_shared",
    "read_shared_episode",
]
