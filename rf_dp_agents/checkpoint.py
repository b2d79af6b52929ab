"""Checkpoints without pickle: a directory holding ``config.json`` and ``model.safetensors``.

``config.json`` = ``{"format_version": 1, "model": ModelConfig.to_dict(), "normalizer": {key: dim},
...metadata}``; ``model.safetensors`` holds every tensor of the model's state dict, normalizer
statistics included. Saving writes a temporary sibling directory and renames it into place; loading
reads JSON and safetensors only (no code runs) and is strict: missing, unexpected or mis-shaped
tensors are an error naming them. Pickle files (``.ckpt``, ``.pt``, ``.pth``, ``.pkl``) are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rf_dp_agents.architecture import RECORD_KEY, ArchitectureRecord, check_model_fits
from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data.normalizer import Normalizer

if TYPE_CHECKING:
    from rf_dp_agents.model import DiffusionPolicy
    from rf_dp_agents.policy import DiffusionPolicyAgent

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RESERVED_KEYS = ("format_version", "model", "normalizer")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".bin")
RUN_SUBDIRS = ("best", "last")
"""Checkpoint subdirectories of a training run directory, in order of preference."""
EPOCHS_DIR = "epochs"
"""Subdirectory of a training run with the weights kept every ``--keep-every`` epochs."""


def save_checkpoint(
    path: str | os.PathLike, model: "DiffusionPolicy", metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` (config, weights, normalizer) to directory ``path`` atomically; return the path.

    ``metadata`` (JSON-serialisable, e.g. epoch, val loss) is stored beside the config and comes back
    from :func:`load_checkpoint`. An existing directory at ``path`` is replaced.
    """
    from rf_dp_agents.model import DiffusionPolicy

    for wrapper_attr in ("module", "_orig_mod"):  # DistributedDataParallel / torch.compile wrappers
        model = getattr(model, wrapper_attr, model)
    if not isinstance(model, DiffusionPolicy):
        raise TypeError(f"save_checkpoint needs a DiffusionPolicy, got {type(model).__name__}")
    path = Path(path)
    metadata = dict(metadata or {})
    clash = [k for k in RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(f"checkpoint metadata may not use the reserved keys {clash}")
    doc = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "normalizer": {key: int(getattr(model.normalizer, f"{key}_scale").shape[0]) for key in model.normalizer.keys},
        **metadata,
    }
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata is not plain JSON ({err}): {metadata!r}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text + "\n")
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def epoch_checkpoint_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    """Where a run keeps the weights of epoch ``epoch`` (``train.py --keep-every``): ``<run>/epochs/epoch-<NNNNN>``."""
    return Path(run_dir) / EPOCHS_DIR / f"epoch-{int(epoch):05d}"


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory named by ``path``: itself, its ``best/`` (preferred) or ``last/``.

    A path to ``config.json`` or ``model.safetensors`` stands for its directory. Pickle files are refused.
    """
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        path = path.parent
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: refusing to load a pickle/torch file (loading it could run arbitrary code); "
            f"rf_dp_agents checkpoints are directories with {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a checkpoint directory ({CONFIG_NAME} + {WEIGHTS_NAME})")
    candidates = [path, *(path / sub for sub in RUN_SUBDIRS)]
    for cand in candidates:
        if (cand / CONFIG_NAME).is_file() and (cand / WEIGHTS_NAME).is_file():
            return cand
    found = sorted(p.name for p in path.iterdir())
    pickles = [name for name in found if Path(name).suffix.lower() in PICKLE_SUFFIXES]
    hint = f"; pickle files {pickles} are not loaded (they could run arbitrary code)" if pickles else ""
    raise FileNotFoundError(
        f"{path} is not a checkpoint: expected {CONFIG_NAME} + {WEIGHTS_NAME} in it or in its "
        f"{' or '.join(s + '/' for s in RUN_SUBDIRS)} subdirectory; found {found}{hint}"
    )


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """Parsed and checked ``config.json`` of the checkpoint at ``path`` (see :func:`resolve_checkpoint_dir`)."""
    ckpt = resolve_checkpoint_dir(path)
    file = ckpt / CONFIG_NAME
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("model", "normalizer"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"{file}: key {key!r} must be a JSON object")
    try:
        model = ModelConfig.from_dict(doc["model"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file}: key 'model': {err}") from None
    if doc.get(RECORD_KEY) is not None:  # the multi-agent architecture the model was trained for
        check_model_fits(ArchitectureRecord.from_dict(doc[RECORD_KEY], str(file)), model, str(file))
    for name, dim in doc["normalizer"].items():
        if not name or "." in name:
            raise ValueError(f"{file}: key 'normalizer': entry {name!r} must be a non-empty name without '.'")
        if type(dim) is not int or dim <= 0:
            raise ValueError(
                f"{file}: key 'normalizer.{name}' must be a positive integer (the dimension), got {dim!r}"
            )
    return doc


def _check_state_dict(file: Path, loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    mis_shaped = [
        f"{k}: file {tuple(loaded[k].shape)} {loaded[k].dtype} vs model {tuple(expected[k].shape)} {expected[k].dtype}"
        for k in sorted(set(loaded) & set(expected))
        if loaded[k].shape != expected[k].shape or loaded[k].dtype != expected[k].dtype
    ]
    problems = []
    groups = (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("mis-shaped or mis-typed tensors", mis_shaped),
    )
    for label, items in groups:
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ValueError(f"{file} does not match its config.json model: " + "; ".join(problems))


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple["DiffusionPolicy", dict[str, Any]]:
    """Rebuild the model saved at ``path``; return ``(model in eval mode, metadata)``.

    ``metadata`` is everything in ``config.json`` besides the model config, normalizer dims and format version.
    """
    from rf_dp_agents.model import DiffusionPolicy

    ckpt = resolve_checkpoint_dir(path)
    doc = read_checkpoint_config(ckpt)
    config = ModelConfig.from_dict(doc["model"])  # checked by read_checkpoint_config
    normalizer = Normalizer({str(k): int(v) for k, v in doc["normalizer"].items()})
    try:
        model = DiffusionPolicy(config, normalizer)
    except ValueError as err:  # e.g. a normalizer dimension that disagrees with the model config
        raise ValueError(f"{ckpt / CONFIG_NAME}: {err}") from None
    file = ckpt / WEIGHTS_NAME
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: cannot read safetensors ({err})") from None
    expected = model.state_dict()
    _check_state_dict(file, tensors, expected)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{file}: tensors contain NaN or inf: {bad[:8]}")
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    metadata = {k: v for k, v in doc.items() if k not in RESERVED_KEYS}
    return model, metadata


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


SAMPLERS = ("ddpm", "ddim", "dpmsolver")
"""Sampler names :func:`load_policy` accepts (DDPM, DDIM and DPM-Solver++ multistep)."""
GRAPH_OPTIONS = ("cuda_graphs", "compile_graphs", "fused_graphs", "bf16_graphs", "graph_tf32")
"""Sampling-graph switches of :class:`~rf_dp_agents.model.DiffusionPolicy` that :func:`load_policy` can set."""


def sampling_config(
    config: ModelConfig, sampler: str | None = None, num_inference_steps: int | None = None, source: str = "checkpoint"
) -> ModelConfig:
    """``config`` with its inference sampler and step count replaced (None keeps the saved value), validated:
    an unknown sampler lists the choices; the steps must be a positive int at most the training schedule's
    ``num_train_timesteps``. ``source`` names the checkpoint in the error."""
    changes: dict[str, Any] = {}
    if sampler is not None:
        if sampler not in SAMPLERS:
            raise ValueError(f"{source}: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        changes["sampler"] = sampler
    if num_inference_steps is not None:
        steps = num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= config.num_train_timesteps:
            raise ValueError(
                f"{source}: num_inference_steps must be an int in [1, {config.num_train_timesteps}] (the "
                f"num_train_timesteps its model was trained with), got {steps!r}"
            )
        changes["num_inference_steps"] = int(steps)
    return dataclasses.replace(config, **changes) if changes else config


def load_policy(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    seed: int = 0,
    *,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    execute_steps: int | None = None,
    temporal_ensemble: float | None = None,
    cuda_graphs: bool | None = None,
    compile_graphs: bool | None = None,
    fused_graphs: bool | None = None,
    bf16_graphs: bool | None = None,
    graph_tf32: bool | None = None,
    compile_cache: str | os.PathLike | bool | None = None,
) -> "DiffusionPolicyAgent":
    """Load a checkpoint directory (or a training run directory with ``best/`` or ``last/``) as a policy object.

    Returns a :class:`~rf_dp_agents.policy.DiffusionPolicyAgent` in eval mode on ``device``
    ("auto": cuda if available, else cpu); ``seed`` seeds its deterministic sampling. Every other argument left
    at None keeps the checkpoint's or the library's default:

    * ``sampler`` ('ddpm', 'ddim', 'dpmsolver') and ``num_inference_steps`` (1 .. the model's
      ``num_train_timesteps``) replace the inference settings saved in the checkpoint.
    * ``execute_steps`` (1 .. Ta) and ``temporal_ensemble`` (ACT's coefficient m) choose how chunks are executed
      (:mod:`rf_dp_agents.policy`); both off by default.
    * ``cuda_graphs``, ``compile_graphs``, ``fused_graphs``, ``bf16_graphs``, ``graph_tf32``: the model's
      sampling-graph switches (:class:`~rf_dp_agents.model.DiffusionPolicy`).
    * ``compile_cache``: on CUDA with compiled graphs, where TorchInductor keeps its compiled kernels across
      processes (a directory; None/True: ``~/.cache/rf_dp_agents/torchinductor`` unless ``TORCHINDUCTOR_CACHE_DIR``
      or ``RF_DP_COMPILE_CACHE`` say otherwise; False: torch's default in the temp directory).

    Bad values are a ValueError naming the checkpoint's ``config.json`` and the accepted range.
    """
    from rf_dp_agents.model.graph_setup import use_compile_cache
    from rf_dp_agents.policy import DiffusionPolicyAgent

    ckpt = resolve_checkpoint_dir(path)
    source = str(ckpt / CONFIG_NAME)
    switches = dict(zip(GRAPH_OPTIONS, (cuda_graphs, compile_graphs, fused_graphs, bf16_graphs, graph_tf32)))
    for name, value in switches.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{source}: {name} must be True, False or None, got {value!r}")
    config = sampling_config(ModelConfig.from_dict(read_checkpoint_config(ckpt)["model"]), sampler,
                             num_inference_steps, source)
    model, metadata = load_checkpoint(ckpt, resolve_device(device))
    model.config = config
    for name, value in switches.items():
        if value is not None:
            setattr(model, name, value)
    if model.device.type == "cuda" and model.cuda_graphs and model.compiles_unet():
        use_compile_cache(compile_cache)
    try:
        return DiffusionPolicyAgent(model, seed=seed, metadata=metadata, execute_steps=execute_steps,
                                    temporal_ensemble=temporal_ensemble)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


__all__ = [
    "CONFIG_NAME",
    "EPOCHS_DIR",
    "FORMAT_VERSION",
    "GRAPH_OPTIONS",
    "SAMPLERS",
    "WEIGHTS_NAME",
    "epoch_checkpoint_dir",
    "load_checkpoint",
    "load_policy",
    "read_checkpoint_config",
    "resolve_checkpoint_dir",
    "resolve_device",
    "sampling_config",
    "save_checkpoint",
]
