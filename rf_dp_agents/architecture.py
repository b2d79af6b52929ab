"""The four multi-agent architectures of RoboFactory's paper, chosen once at conversion and carried to rollout.

Each arm's policy sees its own camera (``local`` view) or the global camera (``global`` view); the arms have one
policy each (``separate``) or one policy for all (``shared``): one Diffusion Policy whose state is every arm's
state concatenated in agent order, whose cameras are every arm's own camera (local) or the global one (global),
and whose action is every arm's 8 numbers concatenated. ``global_camera`` adds the global camera to each policy's
own camera(s), whichever view was named (so ``global-*`` with it is recorded as ``local-*`` with it).

The choice is made by ``scripts/convert_to_zarr.py --architecture`` and written as a record (:class:`ArchitectureRecord`)
into the zarr's attributes (``architecture``); the trainer reads it from there, fits the model's camera keys and
state and action sizes to it, and stores it in the checkpoint's ``config.json`` (key ``architecture``), from which
rollout and ``load_policy`` users route observations and actions (``envs.routes``) without any flag.

Names on disk: ``<task>_Agent<i>[tag]_<n>.zarr`` (separate) or ``<task>_Shared[tag]_<n>.zarr`` (shared), with tag
``""`` (local), ``_Global`` (global view) or ``_LocalGlobal`` (own camera + global); run directories drop the
``_<n>.zarr``. Camera keys: ``img`` is a separate policy's own camera, ``img_<camera>`` is env camera ``<camera>``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from rf_dp_agents.config import ModelConfig

ArchitectureName = Literal["local-separate", "global-separate", "local-shared", "global-shared"]
ARCHITECTURES: tuple[str, ...] = ("local-separate", "global-separate", "local-shared", "global-shared")
DEFAULT_ARCHITECTURE = "local-separate"
GLOBAL_CAMERA = "head_camera_global"
"""Name of the fixed camera that sees the whole scene."""
RECORD_KEY = "architecture"
"""Key of the record in a zarr's attributes and in a checkpoint's ``config.json``."""
ARM_DIM = 8
"""State and action numbers per arm (7 joints + gripper)."""


def own_camera(agent_id: int) -> str:
    """Agent ``agent_id``'s head camera in the -rf tasks."""
    return f"head_camera_agent{agent_id}"


@dataclass(frozen=True)
class Architecture:
    """One cell of the paper's table: ``name`` (view-sharing) and whether the global camera is added."""

    name: str = DEFAULT_ARCHITECTURE
    global_camera: bool = False

    def __post_init__(self) -> None:
        if self.name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.name!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not isinstance(self.global_camera, bool):
            raise ValueError(f"Architecture.global_camera must be true or false, got {self.global_camera!r}")
        if self.global_camera and self.view == "global":  # own camera + global: the local cell with the option
            object.__setattr__(self, "name", "local-" + self.name.split("-")[1])

    @property
    def view(self) -> str:
        """'local' or 'global'."""
        return self.name.split("-")[0]

    @property
    def shared(self) -> bool:
        """One policy for every arm."""
        return self.name.endswith("-shared")

    @property
    def label(self) -> str:
        """Display name, e.g. ``local-shared+global``."""
        return self.name + ("+global" if self.global_camera else "")

    @property
    def cli_flags(self) -> str:
        """The conversion and training flags that choose it: ``--architecture <name>[ --include-global-camera]``."""
        return f"--architecture {self.name}" + (" --include-global-camera" if self.global_camera else "")

    @property
    def tag(self) -> str:
        """File-name tag: '' (local), '_Global' (global view), '_LocalGlobal' (own camera + global)."""
        return "_LocalGlobal" if self.global_camera else "_Global" if self.view == "global" else ""

    @classmethod
    def parse(cls, label: str) -> "Architecture":
        """The architecture of a :attr:`label` (``local-shared``, ``local-separate+global``...)."""
        name, plus, rest = str(label).partition("+")
        if plus and rest != "global":
            raise ValueError(f"unknown architecture {label!r}; choose one of {', '.join(ARCHITECTURES)}, "
                             "optionally with '+global' (the global camera added)")
        return cls(name, bool(plus))

    @classmethod
    def all(cls) -> list["Architecture"]:
        """Every distinct cell: the four, and the two local ones with the global camera added."""
        return [cls(name) for name in ARCHITECTURES] + [cls("local-separate", True), cls("local-shared", True)]

    def cameras(self, agent_ids: Sequence[int]) -> dict[str, str]:
        """Camera key -> env camera of the policy driving ``agent_ids`` (one agent for a separate policy)."""
        if not self.shared and len(agent_ids) != 1:
            raise ValueError(f"a {self.name} policy drives one agent, got {list(agent_ids)}")
        out: dict[str, str] = {}
        if self.view == "local":
            if self.shared:
                out.update({f"img_{own_camera(i)}": own_camera(i) for i in agent_ids})
            else:
                out["img"] = own_camera(agent_ids[0])
        if self.view == "global" or self.global_camera:
            out[f"img_{GLOBAL_CAMERA}"] = GLOBAL_CAMERA
        return out

    def stem(self, task: str, agent_id: int | None = None) -> str:
        """``<task>_Agent<i><tag>`` or ``<task>_Shared<tag>``: the run directory's name."""
        if self.shared:
            return f"{task}_Shared{self.tag}"
        if agent_id is None:
            raise ValueError(f"a {self.name} dataset or run belongs to one agent: give its agent id")
        return f"{task}_Agent{int(agent_id)}{self.tag}"

    def zarr_name(self, task: str, n_episodes: int, agent_id: int | None = None) -> str:
        """File name of the dataset: ``<stem>_<n>.zarr``."""
        return f"{self.stem(task, agent_id)}_{n_episodes}.zarr"

    def dataset_pattern(self, task: str) -> re.Pattern[str]:
        """Matches this architecture's dataset names of ``task``; groups ``agent`` (None when shared) and ``n``."""
        unit = "Shared" if self.shared else r"Agent(?P<agent>\d+)"
        return re.compile(rf"^{re.escape(task)}_{unit}{re.escape(self.tag)}_(?P<n>\d+)\.zarr(\.zip)?$")


@dataclass(frozen=True)
class ArchitectureRecord:
    """What a dataset and a checkpoint remember: the architecture, the agents the model drives (in the order of its
    state and action), the task's agent count, and each camera key's env camera."""

    architecture: Architecture
    agents: tuple[str, ...]
    num_agents: int
    cameras: Mapping[str, str]
    agent_id: int | None = None

    @property
    def state_dim(self) -> int:
        """Size of the model's state: 8 per arm driven."""
        return ARM_DIM * len(self.agents)

    @property
    def action_dim(self) -> int:
        """Size of the model's action: 8 per arm driven."""
        return ARM_DIM * len(self.agents)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (the zarr attribute and the checkpoint key)."""
        return {
            "name": self.architecture.name, "global_camera": self.architecture.global_camera,
            "agents": list(self.agents), "agent_id": self.agent_id, "num_agents": self.num_agents,
            "cameras": dict(self.cameras), "state_dim": self.state_dim, "action_dim": self.action_dim,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "ArchitectureRecord":
        """Parse :meth:`to_dict` output; anything malformed is a ValueError naming ``source`` and the field."""
        where = f"{source}: '{RECORD_KEY}'"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
        try:
            arch = Architecture(data["name"], data.get("global_camera", False))
            agents = tuple(data["agents"])
            num, agent_id, cameras = data["num_agents"], data.get("agent_id"), data["cameras"]
        except KeyError as err:
            raise ValueError(f"{where} lacks the field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        if not agents or not all(isinstance(a, str) for a in agents):
            raise ValueError(f"{where}.agents must be a non-empty list of agent keys, got {data['agents']!r}")
        if isinstance(num, bool) or not isinstance(num, int) or num < len(agents):
            raise ValueError(f"{where}.num_agents must be an int >= {len(agents)}, got {num!r}")
        if agent_id is not None and (isinstance(agent_id, bool) or not isinstance(agent_id, int)):
            raise ValueError(f"{where}.agent_id must be an int or null, got {agent_id!r}")
        if arch.shared != (agent_id is None) or (not arch.shared and len(agents) != 1):
            raise ValueError(f"{where}: a {arch.name} record needs {'no agent_id' if arch.shared else 'one agent'}")
        if not isinstance(cameras, Mapping) or not cameras or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()
        ):
            raise ValueError(f"{where}.cameras must map camera keys to env cameras, got {cameras!r}")
        record = cls(arch, agents, num, dict(cameras), agent_id)
        for name in ("state_dim", "action_dim"):
            if name in data and data[name] != getattr(record, name):
                raise ValueError(f"{where}.{name} is {data[name]!r} but {len(agents)} agents need {getattr(record, name)}")
        return record


def make_record(architecture: Architecture, agents: Sequence[str], agent_id: int | None = None) -> ArchitectureRecord:
    """The record of a model of ``architecture`` for a task with agents ``agents`` (``agent_id``: a separate one's)."""
    if architecture.shared:
        return ArchitectureRecord(architecture, tuple(agents), len(agents), architecture.cameras(range(len(agents))))
    if agent_id is None or not 0 <= agent_id < len(agents):
        raise ValueError(f"a {architecture.name} record needs an agent id in 0..{len(agents) - 1}, got {agent_id!r}")
    return ArchitectureRecord(architecture, (agents[agent_id],), len(agents), architecture.cameras([agent_id]), agent_id)


def dataset_record(path: str | Path) -> ArchitectureRecord | None:
    """The record in a zarr dataset's attributes; None for a dataset written without one (RoboFactory's, older)."""
    from rf_dp_agents.data.replay_buffer import open_zarr_group

    attrs = dict(open_zarr_group(path).attrs)
    return ArchitectureRecord.from_dict(attrs[RECORD_KEY], str(path)) if RECORD_KEY in attrs else None


def policy_record(metadata: Mapping[str, Any] | None, source: str = "checkpoint") -> ArchitectureRecord | None:
    """The record in a checkpoint's metadata (``policy.metadata``); None for checkpoints saved without one."""
    data = (metadata or {}).get(RECORD_KEY)
    return None if data is None else ArchitectureRecord.from_dict(data, source)


def check_model_fits(record: ArchitectureRecord, model: ModelConfig, source: str) -> None:
    """The model config has the record's camera keys and state and action sizes; else a ValueError naming ``source``."""
    want = {"camera_keys": tuple(record.cameras), "state_dim": record.state_dim, "action_dim": record.action_dim}
    for name, value in want.items():
        if getattr(model, name) != value:
            raise ValueError(f"{source}: 'model.{name}' is {getattr(model, name)!r} but its '{RECORD_KEY}' record "
                             f"({record.architecture.label}, agents {list(record.agents)}) needs {value!r}")


def adopt_architecture(model: ModelConfig, record: ArchitectureRecord | None, source: str) -> ModelConfig:
    """``model`` with the camera keys and state and action sizes the dataset's record asks for.

    A field left at its default takes the record's value; one set to something else is a ValueError naming the
    dataset and the flag (the dataset decides, so that the two cannot drift apart).
    """
    if record is None:
        return model
    want = {"camera_keys": tuple(record.cameras), "state_dim": record.state_dim, "action_dim": record.action_dim}
    defaults = ModelConfig()
    for name, value in want.items():
        have = getattr(model, name)
        if have != value and have != getattr(defaults, name):
            raise ValueError(
                f"{source}: the dataset was converted as {record.architecture.label} (zarr attribute "
                f"'{RECORD_KEY}'), whose model needs {name}={value!r}, but the model config says {have!r}; leave "
                f"--model.{name.replace('_', '-')} out: it is read from the dataset"
            )
    return dataclasses.replace(model, **want)


__all__ = [
    "ARCHITECTURES",
    "ARM_DIM",
    "Architecture",
    "ArchitectureName",
    "ArchitectureRecord",
    "DEFAULT_ARCHITECTURE",
    "GLOBAL_CAMERA",
    "RECORD_KEY",
    "adopt_architecture",
    "check_model_fits",
    "dataset_record",
    "make_record",
    "own_camera",
    "policy_record",
]
