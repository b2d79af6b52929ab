"""Checks of predict()'s CUDA-graph paths on a GPU (``scripts/check_gpu_predict.py``; the CPU test suite cannot run
them): graph against eager DDIM actions, the bf16-weight and fused-kernel graphs against eager float32 (also after
in-place weight changes), DDPM's graph reproducible from its generators and continuing the default CUDA stream
without them, DDPM's fused graph against the plain one under the same generators, and several models' graphs
replayed side by side on their own streams. Each check is a (name, passed,
detail) row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rf_dp_agents.config import ModelConfig, tiny_model_config
from rf_dp_agents.model import DiffusionPolicy
from rf_dp_agents.rollout.calls import prepare_for_overlap


@dataclass
class PredictCheckArgs:
    """Check settings."""

    batch_sizes: tuple[int, ...] = (1, 3)
    """Batch sizes to check (each costs one capture per path)."""
    seed_config: bool = True
    """Also check the seed config (240x320 images, U-Net 256/512/1024) besides the tiny one."""
    atol: float = 1e-3
    """Largest absolute gap of graph against eager actions (normalised actions lie in [-1, 1])."""
    bf16_atol: float = 0.05
    """Largest absolute gap of the bf16-weight graph against eager float32 actions."""


def observations(cfg: ModelConfig, batch: int) -> dict[str, torch.Tensor]:
    """Random uint8 images and state on the GPU for ``batch`` rows, seeded by ``batch``."""
    g = torch.Generator(device="cuda").manual_seed(batch)
    obs = {k: torch.randint(0, 256, (batch, cfg.obs_horizon, *cfg.image_shape), dtype=torch.uint8, device="cuda",
                            generator=g) for k in cfg.camera_keys}
    obs[cfg.state_key] = torch.randn(batch, cfg.obs_horizon, cfg.state_dim, device="cuda", generator=g)
    return obs


def generators(batch: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per row, seeded ``offset + row``."""
    return [torch.Generator().manual_seed(offset + i) for i in range(batch)]


def check_config(name: str, cfg: ModelConfig, args: PredictCheckArgs) -> list[tuple[str, bool, str]]:
    """Plain, compiled and fused-kernel DDIM graphs against eager, and the bf16 and fused checks after in-place weight
    changes, at every batch size of ``args``."""
    results = []
    torch.manual_seed(0)
    model = DiffusionPolicy(cfg).cuda().eval()
    model.graph_tf32 = False  # the graphs' own TF32 would differ from the float32 eager reference by more than atol
    model.fused_graphs = False  # the plain and compiled graphs first; the fused kernels (the default) after them
    for batch in args.batch_sizes:
        obs = observations(cfg, batch)
        model.cuda_graphs = False
        eager = model.predict_action(obs, generator=generators(batch))
        model.cuda_graphs, model.compile_graphs = True, False
        plain = model.predict_action(obs, generator=generators(batch))
        model.compile_graphs = True
        compiled = model.predict_action(obs, generator=generators(batch))
        model.fused_graphs = True
        fused = model.predict_action(obs, generator=generators(batch))
        if not model.uses_fused_unet():
            results.append((f"{name}: the fused U-Net kernels", False, "failed; the graph fell back"))
        model.fused_graphs = False
        for label, got in (("plain graph", plain), ("compiled graph", compiled), ("fused-kernel graph", fused)):
            gap = (got - eager).abs().max().item()
            results.append((f"{name}, DDIM, batch {batch}: {label} equals eager", gap <= args.atol,
                            f"max gap {gap:.2e} (actions up to {eager.abs().max().item():.2f})"))
        if not model.compile_graphs:
            results.append((f"{name}: torch.compile of the U-Net", False, "failed; the plain graph was used"))
        results.append(check_in_place(name, model, obs, eager, args.bf16_atol, ("bf16_graphs",)))
        results.append(check_in_place(name, model, obs, eager, args.atol, ("fused_graphs",)))
        results.append(check_in_place(name, model, obs, eager, args.bf16_atol, ("bf16_graphs", "fused_graphs")))
    return results


def check_in_place(name: str, model: DiffusionPolicy, obs: dict[str, torch.Tensor], eager: torch.Tensor,
                   atol: float, switches: tuple[str, ...] = ("bf16_graphs",)) -> tuple[str, bool, str]:
    """The graph with ``switches`` on (``bf16_graphs``: from a bf16 copy of the weights; ``fused_graphs``: through
    the fused kernels) against eager float32, before and after the U-Net's weights change in place."""
    batch = eager.shape[0]
    model.cuda_graphs = True
    for switch in switches:
        setattr(model, switch, True)
    graphed = model.predict_action(obs, generator=generators(batch))
    with torch.no_grad():
        for p in model.noise_pred_net.parameters():
            p.mul_(0.9)
    model.cuda_graphs = False
    eager_after = model.predict_action(obs, generator=generators(batch))
    model.cuda_graphs = True
    graphed_after = model.predict_action(obs, generator=generators(batch))
    with torch.no_grad():
        for p in model.noise_pred_net.parameters():
            p.div_(0.9)
    for switch in switches:
        setattr(model, switch, False)
    gap, gap_after = (graphed - eager).abs().max().item(), (graphed_after - eager_after).abs().max().item()
    moved = (eager_after - eager).abs().max().item()
    ok = gap <= atol and gap_after <= atol and moved > 2 * atol
    names = {"bf16_graphs": "bf16-weight", "fused_graphs": "fused-kernel"}
    label = " ".join(names[switch] for switch in switches) + " graph"
    return (f"{name}, DDIM, batch {batch}: {label} near eager float32, follows in-place weight changes",
            ok, f"max gap {gap:.2e}; after scaling the U-Net's weights by 0.9 {gap_after:.2e} "
                f"(the actions moved {moved:.2e})")


def check_ddpm_seeds(cfg: ModelConfig) -> tuple[str, bool, str]:
    """DDPM through the graph: the same generators repeat the actions, other generators change them."""
    torch.manual_seed(0)
    model = DiffusionPolicy(cfg).cuda().eval()
    obs = observations(cfg, 2)
    first = model.predict_action(obs, generator=generators(2))
    again = model.predict_action(obs, generator=generators(2))
    other = model.predict_action(obs, generator=generators(2, offset=10))
    same, differs = torch.equal(first, again), not torch.allclose(first, other)
    return ("DDPM graph: same generators give the same actions, others differ", same and differs,
            f"repeat equal: {same}, other seeds differ: {differs}")


def check_ddpm_fused(cfg: ModelConfig, atol: float = 1e-3) -> tuple[str, bool, str]:
    """DDPM through the fused graph (fused U-Net, each update one kernel) against the plain graph (the U-Net's own
    forward, the scheduler's element-wise update) under the same generators: the same per-step noise, the same
    actions within ``atol``."""
    torch.manual_seed(0)
    model = DiffusionPolicy(cfg).cuda().eval()
    model.graph_tf32, model.compile_graphs = False, False
    obs = observations(cfg, 2)
    model.fused_graphs = False
    plain = model.predict_action(obs, generator=generators(2))
    model.fused_graphs = True
    fused = model.predict_action(obs, generator=generators(2))
    took = model.uses_fused_unet()
    gap = (fused - plain).abs().max().item()
    return ("DDPM graph: the fused kernels and updates equal the plain graph under the same generators",
            took and gap <= atol, f"fused path taken: {took}, max gap {gap:.2e} (actions up to "
                                  f"{plain.abs().max().item():.2f})")


def check_ddpm_unseeded(cfg: ModelConfig) -> tuple[str, bool, str]:
    """DDPM through the graph without generators: it draws from the default CUDA generator's stream and moves it
    on, so two calls differ and reseeding the default generator repeats the first."""
    torch.manual_seed(0)
    model = DiffusionPolicy(cfg).cuda().eval()
    model.own_graph_generators, model.compile_graphs = True, False
    obs = observations(cfg, 2)
    noise = torch.randn(2, cfg.pred_horizon, cfg.action_dim, device="cuda")
    graph = model._graphed(2, cfg.num_inference_steps)
    torch.cuda.manual_seed(5)
    before = torch.cuda.default_generators[torch.cuda.current_device()].get_offset()
    first = graph(obs, noise)
    moved = torch.cuda.default_generators[torch.cuda.current_device()].get_offset() > before
    second = graph(obs, noise)
    torch.cuda.manual_seed(5)
    repeat = graph(obs, noise)
    differ, same = not torch.allclose(first, second), torch.equal(first, repeat)
    return ("DDPM graph of its own generator, no seed: continues the default CUDA stream", moved and differ and same,
            f"default generator moved on: {moved}, two calls differ: {differ}, reseeded repeat equal: {same}")


def check_graphs_side_by_side(cfg: ModelConfig, lanes: int = 3, calls: int = 20) -> tuple[str, bool, str]:
    """Seeded DDPM graphs of ``lanes`` models replayed from ``lanes`` threads at once, each on a CUDA stream of its
    own (as ``InferenceServer(overlap=True)`` runs agents): every output equals the same call run alone."""
    import concurrent.futures as futures

    torch.manual_seed(0)
    models = [DiffusionPolicy(cfg).cuda().eval() for _ in range(lanes)]
    for model in models:
        model.compile_graphs = False
    obs = observations(cfg, 2)
    default_seeded = models[0].predict_action(obs, generator=generators(2))
    for model in models:
        prepare_for_overlap(model)
        model.build_graphs([2])
    own_seeded = models[0].predict_action(obs, generator=generators(2))
    same_noise = torch.equal(default_seeded, own_seeded)

    def call(lane: int, k: int) -> torch.Tensor:
        return models[lane].predict_action(obs, generator=generators(2, offset=100 * k))

    alone = [[call(lane, k) for k in range(calls)] for lane in range(lanes)]
    torch.cuda.synchronize()  # the reference replays are done before the lanes write the same graphs' inputs
    streams = [torch.cuda.Stream() for _ in range(lanes)]

    def lane_run(lane: int) -> list[torch.Tensor]:
        with torch.cuda.stream(streams[lane]):
            out = [call(lane, k) for k in range(calls)]
            streams[lane].synchronize()
        return out

    with futures.ThreadPoolExecutor(lanes) as pool:
        together = list(pool.map(lane_run, range(lanes)))
    bad = sum(not torch.equal(a, b) for lane in range(lanes) for a, b in zip(alone[lane], together[lane]))
    return (f"DDPM graphs of {lanes} models side by side on {lanes} streams equal the calls run alone; a graph's own "
            "generator gives the default generator's seeded chunk", bad == 0 and same_noise,
            f"{bad} of {lanes * calls} calls differ; own and default generator equal: {same_noise}")


def main(args: PredictCheckArgs) -> int:
    """Run every check, print one line each as its group finishes (a run cut short keeps what it found); 0 when all
    pass, 1 otherwise."""
    if not torch.cuda.is_available():
        raise SystemExit("scripts/check_gpu_predict.py checks the CUDA path: no CUDA device is visible")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results: list[tuple[str, bool, str]] = []

    def report(found: list[tuple[str, bool, str]]) -> None:
        for name, ok, detail in found:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        results.extend(found)

    report(check_config("tiny", tiny_model_config(image_shape=(3, 64, 64), sampler="ddim", num_inference_steps=4),
                        args))
    ddpm = tiny_model_config(image_shape=(3, 64, 64), sampler="ddpm", num_inference_steps=4)
    for check in (check_ddpm_seeds, check_ddpm_unseeded, check_graphs_side_by_side):
        report([check(ddpm)])
    report([check_ddpm_fused(ddpm, args.atol)])
    if args.seed_config:  # the slowest group last
        report(check_config("seed config", ModelConfig(sampler="ddim", num_inference_steps=10), args))
    return 0 if all(ok for _, ok, _ in results) else 1


__all__ = ["PredictCheckArgs", "check_in_place", "check_config", "check_ddpm_fused", "check_ddpm_seeds",
           "check_ddpm_unseeded", "check_graphs_side_by_side", "main"]
