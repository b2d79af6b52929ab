"""DiffusionPolicy: vision encoder + conditional U-Net + noise schedulers (:mod:`.schedulers`) + normalizer.

Training (:meth:`DiffusionPolicy.compute_loss`) noises normalised action chunks with a DDPM schedule and
regresses the noise (or the clean sample). Inference (:meth:`DiffusionPolicy.predict_action`) denoises
Gaussian noise with the sampler named in the config (DDPM, DDIM or DPM-Solver++) and returns raw actions.
Both take raw tensors: uint8 images ``(B, To, C, H, W)`` per camera and raw state ``(B, To, D)``;
normalisation happens inside, with the :class:`Normalizer` submodule whose buffers live in the state dict.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data.normalizer import Normalizer
from rf_dp_agents.model.graph_setup import graph_build_message
from rf_dp_agents.model.graphed import Bf16Unet, GraphedSampler
from rf_dp_agents.model.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    Scheduler,
    randn_tensor,
)
from rf_dp_agents.model.unet import ConditionalUnet1D
from rf_dp_agents.model.unet_fused import FusedUnet, fused_unet_available
from rf_dp_agents.model.vision import FEATURE_DIM, ResNet18Encoder

log = logging.getLogger(__name__)

MAX_CUDA_GRAPHS = 8
"""Captured sampling graphs kept per model (one per batch size, sampler and step count)."""

FILM_TABLE_ROWS = 1024
"""Largest steps x batch whose FiLM conditioning :meth:`DiffusionPolicy.denoise` computes before the loop
(the tables hold steps x batch x 14,336 floats for the seed U-Net: 59 MB at 1024 rows)."""

Generator = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, one per batch row (row-wise reproducible), or None."""

ACTION_KEY = "action"
"""Batch key (and normalizer key) of the action chunk."""
STATE_NORM_KEY = "state"
"""Normalizer key used for the state when the normalizer has no key named ``config.state_key``."""


def make_scheduler(config: ModelConfig, sampler: str = "ddpm") -> Scheduler:
    """Build the scheduler ``sampler`` ('ddpm', 'ddim', 'dpmsolver') with the config's noise schedule.

    When ``config.clip_sample`` is set the predicted clean sample is clipped to [-1, 1]: DDPM and DDIM by
    clipping, DPM-Solver++ (second order, multistep) by dynamic thresholding with a largest threshold of 1,
    which is exactly that clip.
    """
    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}
    if sampler in classes:
        return classes[sampler](
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,
        )
    raise ValueError(f"unknown sampler {sampler!r}; use 'ddpm', 'ddim' or 'dpmsolver'")


class DiffusionPolicy(nn.Module):
    """Chi et al.'s CNN Diffusion Policy with a GroupNorm ResNet18 per camera (or one shared).

    Global condition = concatenation over the To observation frames of [512-d features per camera,
    normalised state]; it FiLM-conditions every residual block of the U-Net.
    """

    def __init__(self, config: ModelConfig, normalizer: Normalizer | None = None) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"DiffusionPolicy needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        if normalizer is None:
            normalizer = Normalizer({STATE_NORM_KEY: config.state_dim, ACTION_KEY: config.action_dim})
        self.state_norm_key = config.state_key if config.state_key in normalizer.keys else STATE_NORM_KEY
        for key, dim in ((self.state_norm_key, config.state_dim), (ACTION_KEY, config.action_dim)):
            if key not in normalizer.keys:
                raise ValueError(
                    f"normalizer needs keys {config.state_key!r} (or {STATE_NORM_KEY!r}) and {ACTION_KEY!r}, "
                    f"it holds {list(normalizer.keys)}"
                )
            got = getattr(normalizer, f"{key}_scale").shape[0]
            if got != dim:
                raise ValueError(f"normalizer key {key!r} has dimension {got}, config expects {dim}")
        self.normalizer = normalizer
        n_encoders = 1 if config.share_encoder else len(config.camera_keys)
        self.encoders = nn.ModuleList(
            ResNet18Encoder(config.image_shape[0], config.crop_shape) for _ in range(n_encoders)
        )
        obs_feature_dim = FEATURE_DIM * len(config.camera_keys) + config.state_dim
        self.global_cond_dim = obs_feature_dim * config.obs_horizon
        self.noise_pred_net = ConditionalUnet1D(
            input_dim=config.action_dim,
            global_cond_dim=self.global_cond_dim,
            diffusion_step_embed_dim=config.diffusion_step_embed_dim,
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
        )
        self.noise_scheduler = make_scheduler(config, "ddpm")
        self._samplers: dict[str, Scheduler] = {}
        self._timesteps_on_device: dict[tuple[str, int, torch.device], torch.Tensor] = {}
        self.cuda_graphs = True
        """On CUDA, sample through a captured CUDA graph per (batch size, sampler, steps): encoder and the whole
        denoising loop in one replay (README, Training and inference speed)."""
        self.compile_graphs = True
        """Where the fused kernels are off or unavailable (``fused_graphs``), compile the U-Net with torch.compile
        (Inductor kernels: GroupNorm, Mish, FiLM and the convolutions' unfolds fused) before a CUDA graph captures
        it. Each new batch size costs one compilation (10-20 s); when compilation fails the graph captures the
        plain U-Net and this turns False."""
        self.channels_last_graphs = True
        """Hold the image encoder channels_last (cuDNN's native layout, Triton GroupNorm) from the first CUDA graph
        capture on; the state dict is unchanged."""
        self.bf16_graphs = False
        """Run the U-Net in sampling graphs from a bfloat16 copy of its weights (``graphed.Bf16Unet``, one copy
        per device shared by the graphs, refreshed at every replay; FiLM conditioning, scheduler and encoder stay
        float32). Actions differ from float32 sampling by bf16 rounding (README, Training and inference speed)."""
        self._bf16_unets: dict[tuple[torch.device, bool], Bf16Unet] = {}  # a dict: the copy stays out of the state dict
        self.fused_graphs = True
        """Run the U-Net in sampling graphs through ``unet_fused.FusedUnet`` (Triton GroupNorm-Mish-FiLM kernels and
        cuBLAS matrix multiplies on the U-Net's own weights) instead of torch.compile, and each DDPM or DDIM update
        as one kernel (``step_fused``): no TorchDynamo or Inductor in the process, so a graph is ready in seconds
        (the default; ``scripts/check_gpu_predict.py`` holds its actions to eager float32 sampling's). Where
        Triton is missing the graph takes the next choice
        (``compile_graphs``, then the plain U-Net). With ``bf16_graphs`` the kernels run the bf16 copy."""
        self.graph_tf32 = True
        """Compile and capture the sampling graphs with TF32 matmuls and convolutions allowed inside them only
        (``graph_setup.tf32_scope``): the graphs run in TF32 whatever the process's global flags, which are left
        unchanged. False: the graphs use the global flags in force when they are built."""
        self.film_tables = True
        """Compute every denoising step's FiLM conditioning in one batch before the loop (when steps x batch
        is at most ``FILM_TABLE_ROWS``) instead of twelve matrix-vector products per step."""
        self.own_graph_generators = False
        """Sampling graphs draw DDPM's per-step noise from a CUDA generator of each graph's own instead of the
        default one: needed where several models' graphs replay at once on different streams
        (``InferenceServer(overlap=True)`` turns it on); a seeded chunk is the same either way."""
        self.graph_capture_stream: torch.cuda.Stream | None = None
        """The stream the sampling graphs are captured on (None: torch's one capture stream for every graph). A
        graph keeps the cuBLAS workspace of its capture stream, so graphs that replay at the same time need capture
        streams of their own (``InferenceServer(overlap=True)`` gives each model one)."""
        self._graphs: dict[tuple[Any, ...], GraphedSampler] = {}

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    # ----------------------------------------------------------------------------------------- checks
    def _check_tensor(self, where: str, key: str, value: object, shape: tuple[int, ...], uint8: bool) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if uint8 and value.dtype != torch.uint8:
            raise ValueError(f"{where}[{key!r}] must be uint8 images, got dtype {value.dtype}")
        if not uint8 and not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{where}[{key!r}] must be a float tensor, got dtype {value.dtype}")
        ok = value.ndim == len(shape) and all(e < 0 or e == g for e, g in zip(shape, value.shape))
        if not ok:
            want = "(" + ", ".join("B" if e < 0 else str(e) for e in shape) + ")"
            raise ValueError(f"{where}[{key!r}] must have shape {want}, got {tuple(value.shape)}")
        return value

    def _check_obs(self, obs: Mapping[str, torch.Tensor], where: str) -> int:
        """Validate camera and state entries of ``obs``; return the batch size."""
        cfg = self.config
        needed = [*cfg.camera_keys, cfg.state_key]
        missing = [k for k in needed if k not in obs]
        if missing:
            raise KeyError(f"{where} is missing keys {missing}; expected {needed}, got {sorted(obs)}")
        to = cfg.obs_horizon
        state = self._check_tensor(where, cfg.state_key, obs[cfg.state_key], (-1, to, cfg.state_dim), uint8=False)
        batch = state.shape[0]
        for key in cfg.camera_keys:
            self._check_tensor(where, key, obs[key], (batch, to, *cfg.image_shape), uint8=True)
        return batch

    # ------------------------------------------------------------------------------------ conditioning
    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Global condition ``(B, To * (512 * cameras + D))`` from raw uint8 images and raw state."""
        cfg = self.config
        device = self.device
        state = obs[cfg.state_key].to(device, torch.float32, non_blocking=True)
        batch, to = state.shape[:2]
        images = [obs[k].to(device, non_blocking=True).flatten(0, 1) for k in cfg.camera_keys]
        if cfg.share_encoder:
            feats = self.encoders[0](torch.cat(images, dim=0)).view(len(images), batch, to, FEATURE_DIM)
            feats = feats.permute(1, 2, 0, 3).reshape(batch, to, -1)
        else:
            feats = torch.cat([enc(img).view(batch, to, FEATURE_DIM) for enc, img in zip(self.encoders, images)], -1)
        state = self.normalizer.normalize(self.state_norm_key, state)
        return torch.cat([feats, state], dim=-1).reshape(batch, -1)

    # ---------------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Same as :meth:`compute_loss`, so DistributedDataParallel sees the loss as the forward pass."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Diffusion loss (MSE on noise for 'epsilon', on the clean actions for 'sample') of a raw batch.

        ``batch``: each camera key uint8 ``(B, To, C, H, W)``, the state key ``(B, To, D)`` and
        ``"action"`` ``(B, T, A)``, all unnormalised.
        """
        cfg = self.config
        size = self._check_obs(batch, "batch")
        if ACTION_KEY not in batch:
            raise KeyError(f"batch is missing key {ACTION_KEY!r}; got {sorted(batch)}")
        action = self._check_tensor(
            "batch", ACTION_KEY, batch[ACTION_KEY], (size, cfg.pred_horizon, cfg.action_dim), uint8=False
        )
        device = self.device
        action = self.normalizer.normalize(ACTION_KEY, action.to(device, torch.float32, non_blocking=True))
        cond = self.encode_obs(batch)
        noise = torch.randn_like(action)
        timesteps = torch.randint(0, cfg.num_train_timesteps, (size,), device=device)
        noisy = self.noise_scheduler.add_noise(action, noise, timesteps)
        pred = self.noise_pred_net(noisy, timesteps, cond)
        target = noise if cfg.prediction_type == "epsilon" else action
        return F.mse_loss(pred, target)

    # --------------------------------------------------------------------------------------- inference
    def _sampler(self) -> Scheduler:
        sampler = self.config.sampler
        if sampler not in self._samplers:
            self._samplers[sampler] = make_scheduler(self.config, sampler)
        return self._samplers[sampler]

    @torch.no_grad()
    def predict_action(
        self,
        obs: Mapping[str, torch.Tensor],
        generator: Generator = None,
        num_inference_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample raw action chunks ``(B, T, A)`` for raw observations (uint8 images, raw state).

        ``generator`` (one, or a list of one per batch row) makes the sampling reproducible;
        ``num_inference_steps`` overrides ``config.num_inference_steps``.
        """
        cfg = self.config
        size = self._check_obs(obs, "obs")
        steps = cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if not 0 < steps <= cfg.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {cfg.num_train_timesteps}] (num_train_timesteps), got {steps}"
            )
        if isinstance(generator, Sequence):
            generator = list(generator)
            if len(generator) != size:
                raise ValueError(f"got {len(generator)} generators for a batch of {size}")
        device = self.device
        noise = randn_tensor((size, cfg.pred_horizon, cfg.action_dim), generator=generator, device=device)
        if self.cuda_graphs and device.type == "cuda" and not self.training:
            return self._graphed(size, steps)(obs, noise, seed=_generator_seed(generator))
        scheduler = self._sampler()
        scheduler.set_timesteps(steps)
        key = (cfg.sampler, steps, device)
        if key not in self._timesteps_on_device:  # copied to the device once, not at every call
            self._timesteps_on_device[key] = scheduler.timesteps.to(device)
        return self.denoise(self.encode_obs(obs), noise, scheduler, self._timesteps_on_device[key], generator)

    def denoise(
        self,
        cond: torch.Tensor,
        noise: torch.Tensor,
        scheduler: Scheduler,
        timesteps_dev: torch.Tensor,
        generator: Generator = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """Run ``scheduler`` (timesteps already set) from ``noise`` under condition ``cond``; raw actions out.

        ``net`` replaces ``self.noise_pred_net`` (e.g. a compiled wrapper of it). The FiLM conditioning of every
        step is computed up front in one batch (:meth:`ConditionalUnet1D.film_tables`) when ``film_tables`` is set
        and steps x batch is at most ``FILM_TABLE_ROWS``, and cast once to ``net.film_dtype`` where ``net`` has
        one (:class:`~rf_dp_agents.model.graphed.Bf16Unet`)."""
        net = self.noise_pred_net if net is None else net
        sample = noise * scheduler.init_noise_sigma
        tables = None
        if self.film_tables and len(timesteps_dev) * cond.shape[0] <= FILM_TABLE_ROWS:
            tables = self.noise_pred_net.film_tables(timesteps_dev, cond)  # float32 whatever net runs in
            film_dtype = getattr(net, "film_dtype", None)  # a Bf16Unet's: one cast here instead of one per step
            if film_dtype is not None:
                tables = [table.to(film_dtype) for table in tables]
        for i, t in enumerate(scheduler.timesteps):
            film = None if tables is None else [table[i] for table in tables]
            model_out = net(sample, timesteps_dev[i], cond, film=film)
            sample = scheduler.step(model_out, t, sample, generator=generator).prev_sample
        return self.normalizer.unnormalize(ACTION_KEY, sample)

    def _graph_key(self, size: int, steps: int) -> tuple[Any, ...]:
        stream = self.graph_capture_stream
        return (size, self.config.sampler, steps, self.device, self.compile_graphs, self.bf16_graphs, self.graph_tf32,
                self.own_graph_generators, None if stream is None else stream.cuda_stream, self.uses_fused_unet())

    def uses_fused_unet(self) -> bool:
        """Whether sampling graphs run the U-Net through :class:`FusedUnet` (``fused_graphs``, Triton available for
        the device)."""
        return self.fused_graphs and fused_unet_available(self.device)

    def compiles_unet(self) -> bool:
        """Whether building a sampling graph compiles the U-Net with torch.compile."""
        return self.compile_graphs and not self.uses_fused_unet()

    def _announce_build(self, sizes: Sequence[int]) -> None:
        """Log the one line that says graphs are being built: at WARNING where the build compiles something (so it
        shows without any logging configuration), at INFO for a plain capture."""
        compiling, fused = self.compiles_unet(), self.uses_fused_unet()
        log.log(logging.WARNING if compiling or fused else logging.INFO,
                graph_build_message(sizes, compiling, fused))

    def has_graph(self, size: int, steps: int | None = None) -> bool:
        """Whether the sampling graph for batch ``size`` (and ``steps``, default the config's) is already built."""
        steps = self.config.num_inference_steps if steps is None else int(steps)
        return self._graph_key(int(size), steps) in self._graphs

    def would_build_graph(self, size: int, steps: int | None = None) -> bool:
        """Whether predicting at batch ``size`` now would first build (compile and capture) a sampling graph."""
        on_graphs = self.cuda_graphs and self.device.type == "cuda" and not self.training
        return on_graphs and not self.has_graph(size, steps)

    def build_graphs(self, batch_sizes: Sequence[int], steps: int | None = None) -> list[int]:
        """Build (compile and capture) the sampling graphs for ``batch_sizes`` now, with one log line first; return
        the sizes built. Nothing is built off CUDA, with ``cuda_graphs`` off, or in training mode."""
        steps = self.config.num_inference_steps if steps is None else int(steps)
        if not (self.cuda_graphs and self.device.type == "cuda" and not self.training):
            return []
        todo = [size for size in dict.fromkeys(int(b) for b in batch_sizes) if not self.has_graph(size, steps)]
        if todo:
            self._announce_build(todo)
        for size in todo:
            self._graphed(size, steps, announce=False)
        return todo

    def _graphed(self, size: int, steps: int, announce: bool = True) -> GraphedSampler:
        """The sampling graph for batch ``size``, built on first use (``announce``: log the one line that says so)."""
        key = self._graph_key(size, steps)
        if key not in self._graphs:
            if not self._graphs and self.channels_last_graphs:  # no graph holds the weights' old storage yet
                self.encoders.to(memory_format=torch.channels_last)
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            if announce:
                self._announce_build([size])
            bf16, fused = None, self.uses_fused_unet()
            if self.bf16_graphs:
                if (self.device, fused) not in self._bf16_unets:
                    self._bf16_unets[self.device, fused] = Bf16Unet(self.noise_pred_net, fused=fused)
                bf16 = self._bf16_unets[self.device, fused]
            try:
                graph = GraphedSampler(self, size, make_scheduler(self.config, self.config.sampler), steps,
                                       compile_unet=self.compiles_unet(), bf16_unet=bf16, tf32=self.graph_tf32,
                                       unet=FusedUnet(self.noise_pred_net) if fused and bf16 is None else None,
                                       own_generator=self.own_graph_generators,
                                       capture_stream=self.graph_capture_stream, fused_step=fused)
            except Exception as exc:  # torch.compile needs Triton and a C compiler; the plain graph does not
                if self.uses_fused_unet():
                    log.warning("the fused U-Net kernels failed (%s: %s); sampling graphs fall back to %s",
                                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                                "torch.compile" if self.compile_graphs else "the plain U-Net")
                    self.fused_graphs = False
                    return self._graphed(size, steps, announce=self.compile_graphs)
                if not self.compiles_unet():
                    raise
                log.warning("torch.compile of the U-Net failed (%s: %s); sampling graphs capture the plain U-Net",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.compile_graphs = False
                return self._graphed(size, steps, announce=False)
            self._graphs[key] = graph
            parts = ", ".join(f"{name.replace('_', ' ')} {sec:.1f} s" for name, sec in graph.build_seconds.items())
            log.info("sampling graph for batch %d (%s-%d) ready: %s", size, self.config.sampler.upper(), steps, parts)
        return self._graphs[key]

    def graph_build_seconds(self) -> dict[str, dict[str, float]]:
        """Per sampling graph built in this process ('batch B, SAMPLER-steps'): the seconds of its build parts."""
        return {f"batch {k[0]}, {k[1].upper()}-{k[2]}": dict(g.build_seconds) for k, g in self._graphs.items()}


def _generator_seed(generator: Generator) -> int | None:
    """The seed a (list of) generator(s) started from, or None."""
    if generator is None:
        return None
    first = generator[0] if isinstance(generator, Sequence) else generator
    return int(first.initial_seed())


__all__ = ["ACTION_KEY", "DiffusionPolicy", "Generator", "STATE_NORM_KEY", "Scheduler", "make_scheduler"]
