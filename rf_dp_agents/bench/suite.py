"""The whole GPU benchmark of ``scripts/benchmark.py`` in one process: the trainer rows, the eager DataLoader and
lerobot peers, the predict() rows and the loss curves, saved to a results JSON after every part; or one part
alone (``--only``), or the README's performance table rendered from a results JSON (``--readme-from``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from rf_dp_agents.bench.peers import eager_dataloader, lerobot_step
from rf_dp_agents.bench.predict_rows import predict_results, user_path
from rf_dp_agents.bench.report import curve_agreement, render_table, speed_ratios, update_readme
from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.timing import build_policy, timed
from rf_dp_agents.bench.trainer_rows import TRAINER_ROWS, lever_variants, profile_step, trainer_run


def main(args: BenchmarkArgs, root: Path) -> None:
    """Run the benchmark ``args`` asks for; ``root`` is the project folder (README.md, benchmarks/results/)."""
    if args.readme_from is not None:
        source = args.readme_from.resolve()
        shown = source.relative_to(root).as_posix() if source.is_relative_to(root) else str(args.readme_from)
        update_readme(json.loads(source.read_text()), shown, root / "README.md")
        return
    if not torch.cuda.is_available():
        raise SystemExit("scripts/benchmark.py measures GPU speed: no CUDA device is visible")
    from rf_dp_agents.data.synthetic import write_seed_size_dataset
    from rf_dp_agents.data import SequenceDataset

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "batch_size": args.batch_size, "n_windows": args.n_windows, "args": {k: str(v) for k, v in dataclasses.asdict(args).items()},
        "training": {},
    }
    if args.only == "lerobot":  # a clean process: lerobot's step and nothing else, with the flags asked for
        torch.backends.cuda.matmul.allow_tf32 = args.lerobot_tf32
        res["training"]["lerobot"] = lerobot_step(args, device, args.image_hw) | {"tf32": args.lerobot_tf32}
        print("  lerobot:", res["training"]["lerobot"], flush=True)
        _write_json(res, _results_file(args, root, res, "lerobot"))
        return
    if not args.data.exists():
        t0 = time.perf_counter()
        write_seed_size_dataset(args.data, args.n_windows, args.n_episodes)
        res["dataset_write_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu_ds = SequenceDataset(args.data, val_ratio=0.0)
    res["dataset_load_s"] = time.perf_counter() - t0
    assert cpu_ds.n_train == args.n_windows, (cpu_ds.n_train, args.n_windows)
    if args.only not in (None, "trainer"):
        gpu_ds = SequenceDataset(args.data, val_ratio=0.0).to(device)
    if args.only == "levers":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        res["levers"] = lever_variants(args, gpu_ds, device)
        print(profile_step(args, gpu_ds, device), flush=True)
        return
    if args.only == "predict":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        out = _results_file(args, root, res, f"{_gpu_word(res)}-predict")
        if args.user_path:  # first: the goals are judged on it, and a run cut short keeps it
            res["predict_user"] = user_path(args, root)
            _write_json(res, out)
        predict_results(args, gpu_ds, device, res, save=lambda: _write_json(res, out))
        from torch.profiler import ProfilerActivity, profile

        policy = build_policy(device, gpu_ds, sampler="ddim", num_inference_steps=10).eval()
        obs = gpu_ds.get_batch(torch.arange(1, device=device))
        with torch.no_grad():
            timed(lambda: policy.predict_action(obs), 3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                timed(lambda: policy.predict_action(obs), 3)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
        return
    if args.only == "profile":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(profile_step(args, gpu_ds, device, rows=40, fast=True), flush=True)
        return
    out = _results_file(args, root, res, _gpu_word(res))
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        _write_json(res, out)

    tr = res["training"]
    res["dataset_gib"] = sum(t.numel() * t.element_size() for t in cpu_ds.tensors) / 2**30
    unknown = sorted(set(args.trainer_rows) - set(TRAINER_ROWS))
    if unknown:
        raise SystemExit(f"--trainer-rows: unknown rows {unknown}; choose from {list(TRAINER_ROWS)}")
    for name in args.trainer_rows:
        print(f"trainer end to end, {name} {TRAINER_ROWS[name]} ...", flush=True)
        try:
            tr[name] = trainer_run(args, name, args.data.parent / "runs")
        except Exception as exc:  # a failing setting is reported, and the other rows still run
            import traceback

            traceback.print_exc()
            tr[name] = {"settings": TRAINER_ROWS[name], "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        print("  ", {k: v for k, v in tr[name].items() if k != "losses"}, flush=True)
        save()
    if "losses" in tr.get("fast", {}) and "losses" in tr.get("trainer_no_compile", {}):
        res["loss_curves"] = curve_agreement(tr["fast"]["losses"], tr["trainer_no_compile"]["losses"])
        print("  loss curves:", res["loss_curves"]["max_rel_gap"], flush=True)
    for row in tr.values():
        row.pop("losses", None)
    save()
    if args.only == "trainer":
        res["ratios"] = speed_ratios(tr)
        save()
        print(render_table(res, str(out)))
        print(f"wrote {out}")
        return
    gpu_ds = SequenceDataset(args.data, val_ratio=0.0).to(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    print("eager fp32 + DataLoader ...", flush=True)
    tr["eager_dataloader"] = eager_dataloader(args, cpu_ds, device)
    print("  ", tr["eager_dataloader"], flush=True)
    save()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    print("predict latency ...", flush=True)
    predict_results(args, gpu_ds, device, res, save)
    if args.user_path:
        print("predict() as users call it (fresh processes, load_policy, default flags) ...", flush=True)
        res["predict_user"] = user_path(args, root)
        save()
    if args.lerobot:
        print("lerobot ...", flush=True)
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            tr["lerobot"] = lerobot_step(args, device, gpu_ds.shapes["img"][1:])
        except Exception as exc:  # a missing or incompatible lerobot is reported, not fatal
            tr["lerobot"] = {"error": f"{type(exc).__name__}: {exc}"}
        print("  ", tr["lerobot"], flush=True)
    res["ratios"] = speed_ratios(tr)
    save()
    print(render_table(res, str(out)))
    print(f"wrote {out}")


def _gpu_word(res: dict[str, Any]) -> str:
    """The GPU's model in a results file name: the last word of its device name (``NVIDIA H200`` -> ``h200``)."""
    return res["gpu"].split()[-1].lower()


def _results_file(args: BenchmarkArgs, root: Path, res: dict[str, Any], name: str) -> Path:
    """``--out``, else ``benchmarks/results/<date>-<name>.json`` under ``root``."""
    return args.out or root / "benchmarks" / "results" / f"{res['date']}-{name}.json"


def _write_json(doc: dict[str, Any], out: Path) -> None:
    """Write ``doc`` to ``out`` through a temporary name (a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)


__all__ = ["main"]
