#!/usr/bin/env python
"""predict() as a user's control loop calls it: a fresh process per measurement, PyTorch's default flags, numpy in
and out, the policy from ``load_policy``, batch 1.

For each sampler two processes run one after the other on the same compile caches: the first shows the first-use
start-up (``--fresh-cache``: empty TorchInductor and Triton caches, as on a new machine), the second a warm second
process. Each reports the time of ``load_policy``, of its first predict() (which builds the sampling graph), the
time from calling ``load_policy`` to the first action, the predict() calls that computed a chunk (median, p90) and
the mean over all calls, the model alone on GPU tensors (``predict_action``), the log lines the graph build printed,
and whether the process's global precision flags were left unchanged. Each process also counts the Python modules it
compiled from source (no bytecode cache found) and their seconds, in all and during the first predict(): an
installation whose bytecode cannot be written (read-only site-packages, ``PYTHONDONTWRITEBYTECODE``) pays that in
every process, a pip install does not; ``--bytecode-cache DIR`` gives the processes a writable bytecode cache, as a
pip install has.

  python scripts/benchmark_predict_user.py --synthetic seed --fresh-cache --output benchmarks/results/predict_user.json
  python scripts/benchmark_predict_user.py checkpoints/LiftBarrier-rf_Agent0 --samplers ddim:10 ddpm:10
  python scripts/benchmark_predict_user.py --synthetic tiny --device cpu --samplers ddpm:3 --repeats 3   # smoke run
"""

from __future__ import annotations

import time

START = time.perf_counter()

import importlib.machinery  # noqa: E402

FROM_SOURCE = {"modules": 0, "seconds": 0.0}
"""Modules this process compiled from source because no bytecode cache was found, and the seconds it took."""
_source_to_code = importlib.machinery.SourceFileLoader.source_to_code


def _counted_source_to_code(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    try:
        return _source_to_code(self, *args, **kwargs)
    finally:
        FROM_SOURCE["modules"] += 1
        FROM_SOURCE["seconds"] += time.perf_counter() - t


importlib.machinery.SourceFileLoader.source_to_code = _counted_source_to_code  # type: ignore[method-assign]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint or training run directory (or --synthetic)")
    p.add_argument("--synthetic", choices=["seed", "tiny"], help="time a randomly initialised checkpoint instead: "
                   "'seed' = the default ModelConfig (240x320 camera, U-Net 256/512/1024), 'tiny' = a CPU smoke size")
    p.add_argument("--samplers", nargs="+",
                   help="name:steps[:bf16][:fused|:compiled] per measurement (default: ddim:10 ddpm:10 ddpm:100 "
                   "ddpm:10:compiled ddpm:10:bf16, bench.predict_user.USER_SAMPLERS)")
    p.add_argument("--repeats", type=int, default=100, help="chunks timed per process (default 100)")
    p.add_argument("--device", default="auto", help="torch device passed to load_policy (default auto)")
    p.add_argument("--warmup", action="store_true", help="call policy.warmup((1,)) after load_policy (timed apart)")
    p.add_argument("--no-graph-tf32", action="store_true", help="load_policy(graph_tf32=False): graphs use the "
                   "process's (default) flags, the figure users got before the graphs chose their own precision")
    p.add_argument("--no-compile-graphs", action="store_true", help="load_policy(compile_graphs=False): where the fused "
                   "kernels are off (:compiled) or unavailable, the graph captures the plain U-Net (no torch.compile)")
    p.add_argument("--profile-first", type=int, default=0, metavar="N", help="profile the first predict() with "
                   "cProfile and keep its N costliest functions by cumulative and by own time")
    p.add_argument("--fresh-cache", action="store_true",
                   help="start from empty compile caches, TorchInductor's and Triton's (new temp dirs)")
    p.add_argument("--bytecode-cache", type=Path, metavar="DIR", help="the processes keep Python bytecode under DIR "
                   "(PYTHONPYCACHEPREFIX; PYTHONDONTWRITEBYTECODE unset), for a machine whose installation keeps none")
    p.add_argument("--output", type=Path, help="also write the results JSON here")
    p.add_argument("--child", type=str, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(spec_text: str, args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; returns its figures."""
    import numpy as np
    import torch

    from rf_dp_agents import load_policy
    from rf_dp_agents.offline_eval import SamplerSpec

    imported = time.perf_counter()
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logging.getLogger("rf_dp_agents").addHandler(Keep())
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.get_float32_matmul_precision())
    before = flags()
    spec = SamplerSpec.parse(spec_text)
    t0 = time.perf_counter()
    policy = load_policy(args.checkpoint, device=args.device, sampler=spec.name, num_inference_steps=spec.steps,
                         bf16_graphs=spec.bf16 or None, fused_graphs=spec.fused,
                         graph_tf32=False if args.no_graph_tf32 else None,
                         compile_graphs=False if args.no_compile_graphs else None)
    t_load = time.perf_counter() - t0
    cfg = policy.config
    rng = np.random.default_rng(0)
    obs = {cfg.camera_keys[0]: rng.integers(0, 256, (1, cfg.image_shape[1], cfg.image_shape[2], 3), dtype=np.uint8),
           cfg.state_key: rng.normal(0.0, 0.1, (1, cfg.state_dim)).astype(np.float32)}
    for key in cfg.camera_keys[1:]:
        obs[key] = obs[cfg.camera_keys[0]]
    t_warm = None
    if args.warmup:
        t1 = time.perf_counter()
        policy.warmup((1,))
        t_warm = time.perf_counter() - t1
    lines_before_first = len(lines)
    profiler = cProfile.Profile() if args.profile_first > 0 else None
    from_source_before = dict(FROM_SOURCE)
    t1 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    action, _ = policy.predict(obs)
    if profiler is not None:
        profiler.disable()
    t_first = time.perf_counter() - t1
    to_first_action = time.perf_counter() - t0
    assert isinstance(action, np.ndarray) and action.shape == (1, cfg.action_dim)
    lines_at_first = lines[lines_before_first:]
    from_source_first = {k: FROM_SOURCE[k] - from_source_before[k] for k in FROM_SOURCE}
    lines_before_steady = len(lines)
    chunk_ms, all_ms = [], []
    while len(chunk_ms) < args.repeats:
        calls = policy.num_model_calls
        t1 = time.perf_counter()
        policy.predict(obs)
        dt = (time.perf_counter() - t1) * 1e3
        all_ms.append(dt)
        if policy.num_model_calls > calls:
            chunk_ms.append(dt)
    lines_after_first = len(lines)
    tensors = {}  # the same observation as the model's input: (1, To, C, H, W) uint8 and (1, To, D), on the device
    for key, value in obs.items():
        t = torch.as_tensor(value).to(policy.device)
        t = t.movedim(-1, -3) if key in cfg.camera_keys else t
        tensors[key] = t.unsqueeze(1).repeat_interleave(cfg.obs_horizon, dim=1)
    model_ms = []
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    for _ in range(args.repeats):
        sync()
        t1 = time.perf_counter()
        policy.model.predict_action(tensors)
        sync()
        model_ms.append((time.perf_counter() - t1) * 1e3)
    return {
        "sampler": str(spec), "device": str(policy.device), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if policy.device.type == "cuda" else None,
        "import_s": imported - START, "load_policy_s": t_load, "warmup_s": t_warm, "first_predict_s": t_first,
        "load_policy_to_first_action_s": to_first_action,
        "chunk_ms_median": float(np.median(chunk_ms)), "chunk_ms_p90": float(np.percentile(chunk_ms, 90)),
        "predict_ms_mean_all_calls": float(np.mean(all_ms)), "model_only_ms_median": float(np.median(model_ms)),
        "log_lines": lines, "log_lines_at_first_predict": lines_at_first,
        "log_lines_after_first_predict": lines[lines_before_steady:lines_after_first],
        "global_flags_unchanged": flags() == before, "global_flags": list(before),
        "compile_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "graph_tf32": policy.model.graph_tf32, "compile_graphs": policy.model.compile_graphs,
        "fused_graphs": policy.model.uses_fused_unet(),
        "graph_build_s": policy.model.graph_build_seconds(), "compile_times_s": _compile_times(),
        "first_predict_profile": _top_functions(profiler, args.profile_first) if profiler is not None else None,
        "compiled_from_source": {"process": dict(FROM_SOURCE), "first_predict": from_source_first},
    }


def _top_functions(profiler: "cProfile.Profile", top: int) -> dict[str, list[list]]:
    """The ``top`` functions of a profile by cumulative time and by own time (excluding callees), each as
    [[seconds, calls, "file:line(name)"], ...]."""
    stats = pstats.Stats(profiler)
    rows = [(cum, own, calls, f"{Path(file).name}:{line}({name})")
            for (file, line, name), (_, calls, own, cum, _) in stats.stats.items()]  # type: ignore[attr-defined]
    by = {"cumulative": 0, "own": 1}
    return {kind: [[round(r[i], 3), r[2], r[3]] for r in sorted(rows, key=lambda r: -r[i])[:top]]
            for kind, i in by.items()}


def _compile_times(top: int = 12) -> dict[str, float]:
    """TorchDynamo's own account of this process's compilation (seconds per phase, the largest ``top``)."""
    try:
        from torch._dynamo.utils import compile_times

        table = compile_times(repr="csv", aggregate=True)
    except Exception:  # a private API: its absence or a changed format leaves the figure out
        return {}
    names, values = table if isinstance(table, tuple) and len(table) == 2 else ([], [])
    pairs = []
    for name, value in zip(names, values):
        try:
            pairs.append((str(name), float(value)))
        except (TypeError, ValueError):
            continue
    return dict(sorted(pairs, key=lambda kv: -kv[1])[:top])


def main() -> int:
    args = parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return 0
    if (args.checkpoint is None) == (args.synthetic is None):
        print("error: give a checkpoint directory or --synthetic seed|tiny (not both)", file=sys.stderr)
        return 2
    from rf_dp_agents.bench.predict_user import (USER_SAMPLERS, ChildFailed, child_env, run_user_path,
                                                  synthetic_checkpoint)

    work = Path(tempfile.mkdtemp(prefix="predict-user-"))
    ckpt = args.checkpoint or synthetic_checkpoint(args.synthetic, work)
    env = child_env(ROOT, work, args.fresh_cache, args.bytecode_cache)
    passthrough = ["--repeats", str(args.repeats), "--device", args.device, "--profile-first", str(args.profile_first)]
    switches = {"--warmup": args.warmup, "--no-graph-tf32": args.no_graph_tf32,
                "--no-compile-graphs": args.no_compile_graphs}
    passthrough += [flag for flag, on in switches.items() if on]
    try:
        rows = run_user_path(Path(__file__).resolve(), ckpt, args.samplers or USER_SAMPLERS, passthrough, env,
                             report=lambda line: print(line, flush=True))
    except ChildFailed as exc:
        print(exc, file=sys.stderr)
        return exc.returncode or 1
    doc = {"checkpoint": str(args.checkpoint or f"synthetic {args.synthetic}"), "fresh_cache": args.fresh_cache,
           "bytecode_cache": args.bytecode_cache is not None,
           "warmup": args.warmup, "graph_tf32": not args.no_graph_tf32, "rows": rows}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
