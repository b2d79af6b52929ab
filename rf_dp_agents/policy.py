"""The policy object users call: observation history + action queue around a DiffusionPolicy.

:class:`DiffusionPolicyAgent` follows the stable-baselines3 ``predict`` contract, so
``stable_baselines3.common.evaluation.evaluate_policy`` accepts it. Per environment it keeps the last
To observations (the first one repeated at an episode start) and a queue of Ta actions taken from the
predicted chunk ``pred[:, To-1 : To-1+Ta]``. Each ``predict`` call returns one action per env; the model
runs only when some env's queue is empty, and then only on the envs whose queue is empty (the others
keep executing their chunk; in lock-step rollouts that is every env at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.model import DiffusionPolicy

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class PendingAction:
    """What :meth:`DiffusionPolicyAgent.submit` started: the caller's observation, and the chunk being computed
    for envs ``rows`` (``result`` is None when every env still had actions queued)."""

    observation: Mapping[str, Any]
    batched: bool
    rows: np.ndarray
    result: Callable[[], torch.Tensor] | None
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class DiffusionPolicyAgent:
    """Stateful wrapper of a :class:`DiffusionPolicy` for closed-loop control of N parallel envs.

    Observations: a dict with each camera key (uint8 images, ``(N, H, W, C)`` or ``(N, C, H, W)``) and
    the state key (``(N, D)``), numpy or torch; a single unbatched observation (no leading N) is accepted
    too. Keys the model does not use are ignored. Inputs are never modified.
    """

    def __init__(self, model: DiffusionPolicy, seed: int = 0, metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(model, DiffusionPolicy) and not (
            isinstance(getattr(model, "config", None), ModelConfig) and callable(getattr(model, "predict_action", None))
        ):
            raise TypeError(
                f"DiffusionPolicyAgent wraps a DiffusionPolicy (or a stand-in with a ModelConfig `config` and "
                f"`predict_action`, such as rollout's RemoteModel), got {type(model).__name__}"
            )
        self.model = model.eval()
        self.seed = int(seed)
        """Seed of the noise used when ``deterministic=True`` (reseeded at every inference)."""
        self.metadata: dict[str, Any] = dict(metadata or {})
        """Extra checkpoint metadata (e.g. training epoch, validation loss)."""
        self.num_model_calls = 0
        """How many times the diffusion model has been run (one batched call counts once)."""
        self.reset()

    @property
    def config(self) -> ModelConfig:
        """The model's configuration (horizons, shapes, keys)."""
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Device the model runs on."""
        return self.model.device

    @property
    def n_envs(self) -> int | None:
        """Number of envs seen since the last :meth:`reset` (None before the first call)."""
        return self._n_envs

    def reset(self) -> None:
        """Forget every env's observation history and action queue; the number of envs may change after this."""
        self._n_envs: int | None = None
        self._history: dict[str, torch.Tensor] = {}
        self._queue: torch.Tensor | None = None
        self._left = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------------------------ input parsing
    def _as_tensor(self, key: str, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach()
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise ValueError(f"observation[{key!r}] has dtype object; expected a numeric array")
            if not value.flags.writeable or not value.flags.c_contiguous:
                value = np.array(value, copy=True, order="C")  # torch cannot wrap read-only/negative-stride arrays
            return torch.from_numpy(value)
        raise ValueError(f"observation[{key!r}] must be a numpy array or torch tensor, got {type(value).__name__}")

    def _parse(self, observation: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], bool]:
        """Validate ``observation``; return ({key: batched tensor on the model device}, was_batched)."""
        cfg = self.config
        needed = [*cfg.camera_keys, cfg.state_key]
        if not isinstance(observation, Mapping):
            raise ValueError(f"observation must be a dict with keys {needed}, got {type(observation).__name__}")
        missing = [k for k in needed if k not in observation]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; expected {needed}, got {sorted(observation)}")
        state = self._as_tensor(cfg.state_key, observation[cfg.state_key])
        if state.dtype == torch.bool or not (state.is_floating_point() or state.dtype in _INT_DTYPES):
            raise ValueError(f"observation[{cfg.state_key!r}] must be a float array, got dtype {state.dtype}")
        if state.ndim not in (1, 2) or state.shape[-1] != cfg.state_dim or (state.ndim == 2 and state.shape[0] == 0):
            raise ValueError(
                f"observation[{cfg.state_key!r}] must have shape (N, {cfg.state_dim}) or ({cfg.state_dim},), "
                f"got {tuple(state.shape)}"
            )
        batched = state.ndim == 2
        n = state.shape[0] if batched else 1
        device = self.device
        state = state.to(device, torch.float32).reshape(n, cfg.state_dim)
        if not torch.isfinite(state).all():
            raise ValueError(f"observation[{cfg.state_key!r}] contains NaN or inf")
        out = {cfg.state_key: state}
        c, h, w = cfg.image_shape
        lead = (n,) if batched else ()
        for key in cfg.camera_keys:
            img = self._as_tensor(key, observation[key])
            if img.dtype != torch.uint8:
                raise ValueError(f"observation[{key!r}] must be uint8 images, got dtype {img.dtype}")
            if tuple(img.shape) == (*lead, c, h, w):
                chw = img
            elif tuple(img.shape) == (*lead, h, w, c):
                chw = img.movedim(-1, -3)
            else:
                want = "N, " if batched else ""
                raise ValueError(
                    f"observation[{key!r}] must have shape ({want}{c}, {h}, {w}) or ({want}{h}, {w}, {c}) "
                    f"to match observation[{cfg.state_key!r}] of shape {tuple(observation[cfg.state_key].shape)}, "
                    f"got {tuple(img.shape)}"
                )
            out[key] = chw.to(device).reshape(n, c, h, w)
        return out, batched

    def _episode_starts(self, episode_start: Any, n: int) -> np.ndarray:
        if episode_start is None:
            return np.zeros(n, dtype=bool)
        starts = np.asarray(episode_start.cpu() if isinstance(episode_start, torch.Tensor) else episode_start)
        if starts.dtype == object or starts.ndim > 1 or starts.size != n:
            raise ValueError(f"episode_start must be {n} booleans (one per env), got shape {starts.shape}")
        return starts.reshape(n).astype(bool)

    # ---------------------------------------------------------------------------------- state update
    def _observe(self, obs: dict[str, torch.Tensor], episode_start: Any) -> None:
        """Push one observation per env into the histories, clearing envs that start an episode."""
        n = obs[self.config.state_key].shape[0]
        fresh = self._episode_starts(episode_start, n)
        if self._n_envs is None:
            self._n_envs = n
            self._left = np.zeros(n, dtype=np.int64)
            fresh[:] = True
        elif n != self._n_envs:
            raise ValueError(
                f"got observations for {n} envs but this policy tracks {self._n_envs}; call reset() "
                "before changing the number of envs"
            )
        self._left[fresh] = 0
        to = self.config.obs_horizon
        fresh_idx = torch.as_tensor(np.nonzero(fresh)[0], device=self.device)
        for key, new in obs.items():
            if key not in self._history:
                self._history[key] = new.unsqueeze(1).repeat_interleave(to, dim=1)
                continue
            hist = torch.cat([self._history[key][:, 1:], new.unsqueeze(1)], dim=1)
            if fresh_idx.numel():
                hist[fresh_idx] = new[fresh_idx].unsqueeze(1)
            self._history[key] = hist

    def _start_infer(self, rows: np.ndarray, deterministic: bool) -> Callable[[], torch.Tensor]:
        """Start the model on the histories of envs ``rows``; the returned call gives their executable chunks
        (len(rows), Ta, A). A model with ``submit_action`` (rollout's RemoteModel) computes meanwhile."""
        cfg = self.config
        idx = torch.as_tensor(rows, device=self.device)
        obs = {key: hist[idx] for key, hist in self._history.items()}
        generator = [torch.Generator().manual_seed(self.seed) for _ in rows] if deterministic else None
        self.num_model_calls += 1
        start = cfg.obs_horizon - 1
        submit = getattr(self.model, "submit_action", None)
        if submit is not None:
            wait = submit(obs, generator=generator)
            return lambda: wait()[:, start : start + cfg.action_horizon]
        pred = self.model.predict_action(obs, generator=generator)[:, start : start + cfg.action_horizon]
        return lambda: pred

    @staticmethod
    def _output(action: torch.Tensor, observation: Mapping[str, Any], state_key: str, batched: bool) -> ArrayLike:
        if not batched:
            action = action[0]
        ref = observation[state_key]
        if isinstance(ref, torch.Tensor):
            return action.to(ref.device)
        return action.cpu().numpy()

    # -------------------------------------------------------------------------------------- public API
    @torch.no_grad()
    def predict(
        self,
        observation: Mapping[str, Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[ArrayLike, Any]:
        """One action per env: ``(N, A)`` (``(A,)`` for an unbatched observation), and ``state`` unchanged.

        ``episode_start[i]`` (bools, one per env) clears env i's history and queue before this observation
        is used. ``deterministic=True`` samples with noise seeded by ``self.seed``, so equal histories give
        equal actions. Returns numpy for numpy input, a tensor on the input's device for torch input.
        """
        return self.collect(self.submit(observation, episode_start, deterministic)), state

    @torch.no_grad()
    def submit(self, observation: Mapping[str, Any], episode_start: Any = None, deterministic: bool = False) -> PendingAction:
        """The first half of :meth:`predict`: take the observation and start the model for the envs whose queue
        is empty. With a remote model the chunk is computed while the caller goes on (e.g. submits for the other
        agents); :meth:`collect` must follow before the next ``submit``."""
        obs, batched = self._parse(observation)
        self._observe(obs, episode_start)
        need = np.nonzero(self._left == 0)[0]
        result = self._start_infer(need, deterministic) if need.size else None
        return PendingAction(observation, batched, need, result)

    @torch.no_grad()
    def collect(self, pending: PendingAction) -> ArrayLike:
        """The second half of :meth:`predict`: wait for the chunk (if the model ran), return one action per env."""
        cfg = self.config
        n = self._n_envs
        assert n is not None
        if self._queue is None:
            self._queue = torch.zeros(n, cfg.action_horizon, cfg.action_dim, device=self.device)
        if pending.result is not None:
            self._queue[torch.as_tensor(pending.rows, device=self.device)] = pending.result().to(self.device)
            self._left[pending.rows] = cfg.action_horizon
        pos = torch.as_tensor(cfg.action_horizon - self._left, device=self.device)
        action = self._queue[torch.arange(n, device=self.device), pos]
        self._left -= 1
        return self._output(action, pending.observation, cfg.state_key, pending.batched)

    @torch.no_grad()
    def predict_action_chunk(
        self, observation: Mapping[str, Any], episode_start: Any = None, deterministic: bool = False
    ) -> ArrayLike:
        """Push ``observation`` into the histories and return every env's next Ta actions ``(N, Ta, A)``.

        The model runs for all envs; the action queues are emptied, so a later :meth:`predict` plans afresh.
        """
        obs, batched = self._parse(observation)
        self._observe(obs, episode_start)
        assert self._n_envs is not None
        chunk = self._start_infer(np.arange(self._n_envs), deterministic)()
        self._left[:] = 0
        return self._output(chunk, observation, self.config.state_key, batched)


__all__ = ["DiffusionPolicyAgent", "PendingAction"]
