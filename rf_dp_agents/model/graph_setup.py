"""How sampling graphs are built without touching the caller's process settings: precision scope, compile cache,
the start-up message.

* :func:`tf32_scope`: TF32 allowed for float32 matrix multiplies and cuDNN convolutions inside the block only; the
  previous flags come back afterwards, however they were set (PyTorch's legacy ``allow_tf32`` /
  ``set_float32_matmul_precision`` or the newer ``fp32_precision`` attributes). A CUDA graph captured inside keeps the
  math mode its kernels were captured with, so the graph replays in TF32 while the caller's own code does not.
* :func:`use_compile_cache`: points TorchInductor's on-disk caches (FX graph, AOTAutograd, Triton and autotuning
  caches, all kept under ``TORCHINDUCTOR_CACHE_DIR``) at a persistent directory under the user's cache instead of
  the system temp directory, so a second process finds the compiled U-Net.
* :func:`graph_build_message`: the one line printed before a graph is compiled.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""TorchInductor's cache directory variable (its default is ``<tmp>/torchinductor_<user>``)."""
COMPILE_CACHE_ENV = "RF_DP_COMPILE_CACHE"
"""Overrides the default compile cache directory; ``off`` leaves TorchInductor's own default in place."""


@contextlib.contextmanager
def tf32_scope(enabled: bool = True) -> Iterator[None]:
    """Allow TF32 for float32 matmuls and cuDNN convolutions inside the block (``enabled=False``: a no-op).

    Saves and restores the flags through the API the process already uses: the legacy one
    (``torch.get_float32_matmul_precision()``, ``torch.backends.cudnn.allow_tf32``) when it can be read, otherwise the
    ``fp32_precision`` attributes, which are restored in every case where they exist.
    """
    if not enabled:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    new_api = hasattr(matmul, "fp32_precision")
    saved_new = (matmul.fp32_precision, cudnn.conv.fp32_precision) if new_api else None
    try:  # reading the legacy flags raises once the process has set the new ones
        saved_legacy: tuple[str, bool] | None = (torch.get_float32_matmul_precision(), bool(cudnn.allow_tf32))
    except RuntimeError:
        saved_legacy = None
    try:
        if saved_legacy is not None:
            torch.set_float32_matmul_precision("high")
            cudnn.allow_tf32 = True
        else:
            matmul.fp32_precision = "tf32"
            cudnn.conv.fp32_precision = "tf32"
        yield
    finally:
        if saved_legacy is not None:
            torch.set_float32_matmul_precision(saved_legacy[0])
            cudnn.allow_tf32 = saved_legacy[1]
        if saved_new is not None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_new


def default_compile_cache_dir() -> Path:
    """``$RF_DP_COMPILE_CACHE`` if set, else ``$XDG_CACHE_HOME/rf_dp_agents/torchinductor`` (``~/.cache/...``)."""
    override = os.environ.get(COMPILE_CACHE_ENV)
    if override and override.lower() != "off":
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rf_dp_agents" / "torchinductor"


def use_compile_cache(path: str | os.PathLike | bool | None = None) -> Path | None:
    """Point TorchInductor's caches at a persistent directory; return the directory in force (None: torch's default).

    ``path``: a directory, ``True``/``None`` for :func:`default_compile_cache_dir`, ``False`` to leave torch's
    default. A ``TORCHINDUCTOR_CACHE_DIR`` the user chose wins (one that is torch's own default, which importing
    parts of torch writes into the environment, does not), as does ``RF_DP_COMPILE_CACHE=off`` for the default.
    Takes effect for compilations that start afterwards.
    """
    chosen = os.environ.get(INDUCTOR_CACHE_ENV)
    if chosen and os.path.abspath(chosen) != _torch_default_cache_dir():
        return Path(chosen)
    if path is False or (path in (None, True) and os.environ.get(COMPILE_CACHE_ENV, "").lower() == "off"):
        return None
    folder = default_compile_cache_dir() if path in (None, True) else Path(path).expanduser()  # type: ignore[arg-type]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compile cache directory {folder} cannot be created ({err})") from None
    os.environ[INDUCTOR_CACHE_ENV] = str(folder.resolve())
    return folder.resolve()


def _torch_default_cache_dir() -> str | None:
    """TorchInductor's default cache directory (``<tmp>/torchinductor_<user>``), or None where torch lacks it."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def graph_build_message(batch_sizes: Sequence[int], compiling: bool, fused: bool = False) -> str:
    """The line logged before sampling graphs are built for ``batch_sizes`` (``compiling``: the U-Net compiled with
    torch.compile; ``fused``: run through the fused U-Net kernels)."""
    sizes = ", ".join(str(int(b)) for b in batch_sizes)
    plural = "s" if len(batch_sizes) > 1 else ""
    if compiling:
        each = " each" if len(batch_sizes) > 1 else ""
        return (f"compiling the sampling graph{plural} for batch{'es' if plural else ''} {sizes} "
                f"(10-20 s{each} on first use, less with a warm compile cache)...")
    how = (" with the fused U-Net kernels (Triton compiles them on first use and keeps them in its cache)"
           if fused else "")
    return f"capturing the sampling graph{plural} for batch{'es' if plural else ''} {sizes}{how}..."


__all__ = [
    "COMPILE_CACHE_ENV",
    "INDUCTOR_CACHE_ENV",
    "default_compile_cache_dir",
    "graph_build_message",
    "tf32_scope",
    "use_compile_cache",
]
