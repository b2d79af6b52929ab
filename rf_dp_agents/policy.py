"""The policy object users call: observation history + action queue around a DiffusionPolicy.

:class:`DiffusionPolicyAgent` follows the stable-baselines3 ``predict`` contract, so
``stable_baselines3.common.evaluation.evaluate_policy`` accepts it. Per environment it keeps the last
To observations (the first one repeated at an episode start) and a queue of Ta actions taken from the
predicted chunk ``pred[:, To-1 : To-1+Ta]``. Each ``predict`` call returns one action per env; the model
runs only when some env's queue is empty, and then only on the envs whose queue is empty (the others
keep executing their chunk; in lock-step rollouts that is every env at once).

Two ways of executing chunks, both off by default (choose them at ``load_policy`` or on the object):

* ``execute_steps=k`` (1 <= k <= Ta): execute only the first k actions of each chunk, then plan again from the newest
  observations (RoboFactory evaluates with 6 of 8). The model runs every k steps instead of every Ta.
* ``temporal_ensemble=m``: ACT's temporal ensembling. A new chunk is predicted at every step (Ta times the model
  calls of plain execution); the action executed at step t is the weighted mean of every prediction for step t
  that the chunks predicted so far still hold (the chunk predicted at step s holds steps s .. s+H-1, H = k if
  ``execute_steps`` is set, else Ta), with weights ``exp(-m * i)``, i = 0 for the oldest of those chunks. With
  m > 0 the oldest prediction gets the largest weight (ACT uses m = 0.01), m = 0 is the plain mean and m < 0
  favours the newest chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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

    def __init__(
        self,
        model: DiffusionPolicy,
        seed: int = 0,
        metadata: Mapping[str, Any] | None = None,
        execute_steps: int | None = None,
        temporal_ensemble: float | None = None,
    ) -> None:
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
        self._execute_steps = check_execute_steps(execute_steps, self.config.action_horizon)
        self._temporal_ensemble = check_temporal_ensemble(temporal_ensemble)
        self.reset()

    @property
    def execute_steps(self) -> int | None:
        """Execute only the first k <= Ta actions of each chunk (None: all Ta). Setting it empties the queues."""
        return self._execute_steps

    @execute_steps.setter
    def execute_steps(self, value: int | None) -> None:
        self._execute_steps = check_execute_steps(value, self.config.action_horizon)
        self._clear_plans()

    @property
    def temporal_ensemble(self) -> float | None:
        """ACT's temporal ensembling coefficient m (None: off); a chunk is predicted every step when it is on.
        Setting it empties the queues."""
        return self._temporal_ensemble

    @temporal_ensemble.setter
    def temporal_ensemble(self, value: float | None) -> None:
        self._temporal_ensemble = check_temporal_ensemble(value)
        self._clear_plans()

    @property
    def chunk_execution(self) -> dict[str, Any]:
        """The chunk execution options as plain JSON (``execute_steps``, ``temporal_ensemble``)."""
        return {"execute_steps": self._execute_steps, "temporal_ensemble": self._temporal_ensemble}

    @property
    def _horizon(self) -> int:
        """How many actions of each chunk are used: ``execute_steps`` or Ta."""
        return self._execute_steps or self.config.action_horizon

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
        self._chunks: torch.Tensor | None = None  # ensembling: (N, H, H, A), slot j = the chunk predicted j steps ago
        self._held = np.zeros(0, dtype=np.int64)  # ensembling: chunks held per env (slots 0 .. held-1)

    def reads_next_observation(self) -> np.ndarray:
        """Per env: whether the model will read the next observation given to this policy. Without temporal
        ensembling (which runs the model every step) an observation reaches the model only when the env's action
        queue runs out within the next To steps; the others leave the To-step history unread, so a caller may
        pass a stale camera frame for them (rollout skips rendering those). True before the first observation. An
        observation that starts an episode (``episode_start``) always reaches the model, whatever this said."""
        if self._n_envs is None:
            return np.ones(1, dtype=bool)
        if self._temporal_ensemble is not None:
            return np.ones(self._n_envs, dtype=bool)
        return self._left <= self.config.obs_horizon - 1

    def _clear_plans(self) -> None:
        """Empty every env's action queue and ensemble (the observation histories stay)."""
        self._queue, self._chunks = None, None
        self._left[:] = 0
        self._held[:] = 0

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
        if not torch.isfinite(state).all():  # checked where the input lives: numpy input costs no device sync
            raise ValueError(f"observation[{cfg.state_key!r}] contains NaN or inf")
        state = state.to(device, torch.float32).reshape(n, cfg.state_dim)
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
            self._held = np.zeros(n, dtype=np.int64)
            fresh[:] = True
        elif n != self._n_envs:
            raise ValueError(
                f"got observations for {n} envs but this policy tracks {self._n_envs}; call reset() "
                "before changing the number of envs"
            )
        self._left[fresh] = 0
        self._held[fresh] = 0
        to = self.config.obs_horizon
        fresh_idx = torch.as_tensor(np.nonzero(fresh)[0], device=self.device) if fresh.any() else None
        for key, new in obs.items():
            if key not in self._history:
                self._history[key] = new.unsqueeze(1).repeat_interleave(to, dim=1)
                continue
            hist = torch.cat([self._history[key][:, 1:], new.unsqueeze(1)], dim=1)
            if fresh_idx is not None:
                hist[fresh_idx] = new[fresh_idx].unsqueeze(1)
            self._history[key] = hist

    def _start_infer(self, rows: np.ndarray, deterministic: bool) -> Callable[[], torch.Tensor]:
        """Start the model on the histories of envs ``rows``; the returned call gives their executable chunks
        (len(rows), Ta, A). A model with ``submit_action`` (rollout's RemoteModel) computes meanwhile."""
        cfg = self.config
        if len(rows) == self._n_envs:  # every env (rows ascending): the histories as they are, no gather
            obs = dict(self._history)
        else:
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
    def _output_device(observation: Mapping[str, Any], state_key: str) -> torch.device:
        """Where actions are returned, and so where the queues are held: the input's device (CPU for numpy)."""
        ref = observation[state_key]
        return ref.device if isinstance(ref, torch.Tensor) else torch.device("cpu")

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
        ensemble = self._temporal_ensemble is not None
        need = np.arange(len(self._left)) if ensemble else np.nonzero(self._left == 0)[0]
        result = self._start_infer(need, deterministic) if need.size else None
        return PendingAction(observation, batched, need, result)

    @torch.no_grad()
    def collect(self, pending: PendingAction) -> ArrayLike:
        """The second half of :meth:`predict`: wait for the chunk (if the model ran), return one action per env."""
        cfg = self.config
        n = self._n_envs
        assert n is not None
        # the queues live where the actions are returned (the CPU for numpy input): a step that takes its action
        # from the queue runs no device work, and a step that runs the model copies its chunk back once
        where = self._output_device(pending.observation, cfg.state_key)
        if self._temporal_ensemble is not None:
            assert pending.result is not None and len(pending.rows) == n, "ensembling predicts for every env"
            action = self._ensemble(pending.result().to(where))
            return self._output(action, pending.observation, cfg.state_key, pending.batched)
        if self._queue is None:
            self._queue = torch.zeros(n, cfg.action_horizon, cfg.action_dim, device=where)
        elif self._queue.device != where:
            self._queue = self._queue.to(where)
        fill = self._horizon
        if pending.result is not None:
            chunk = pending.result().to(where)
            if len(pending.rows) == n:  # every env (rows ascending)
                self._queue.copy_(chunk)
            else:
                self._queue[torch.as_tensor(pending.rows, device=where)] = chunk
            self._left[pending.rows] = fill
        pos = torch.as_tensor(fill - self._left, device=where)
        action = self._queue[torch.arange(n, device=where), pos]
        self._left -= 1
        return self._output(action, pending.observation, cfg.state_key, pending.batched)

    def _ensemble(self, chunk: torch.Tensor) -> torch.Tensor:
        """Add every env's new chunk ``(N, Ta, A)`` to its ensemble; return the weighted mean for this step."""
        h, m = self._horizon, float(self._temporal_ensemble)  # type: ignore[arg-type]
        n, _, a = chunk.shape
        where = chunk.device
        new = chunk[:, :h].float().unsqueeze(1)
        if self._chunks is None:
            self._chunks = torch.zeros(n, h, h, a, device=where)
        self._chunks = torch.cat([new, self._chunks[:, :-1].to(where)], dim=1)  # slot j: predicted j steps ago
        self._held = np.minimum(self._held + 1, h)
        slots = torch.arange(h, device=where)
        for_now = self._chunks[:, slots, slots]  # (N, H, A): what the chunk of slot j predicted for this step
        held = torch.as_tensor(self._held, device=where).unsqueeze(1)
        oldest_first = (held - 1 - slots).float()  # i = 0 for the oldest chunk held
        logits = (-m * oldest_first).masked_fill(slots >= held, float("-inf"))
        weights = torch.softmax(logits, dim=1)  # exp(-m i) / sum_i exp(-m i) over the chunks held
        return (weights.unsqueeze(-1) * for_now).sum(dim=1)

    @torch.no_grad()
    def predict_action_chunk(
        self, observation: Mapping[str, Any], episode_start: Any = None, deterministic: bool = False
    ) -> ArrayLike:
        """Push ``observation`` into the histories and return every env's next Ta actions ``(N, Ta, A)``.

        The model runs for all envs; the action queues (and ensembles) are emptied, so a later :meth:`predict`
        plans afresh. The chunk execution options do not apply: this is the whole executable chunk.
        """
        obs, batched = self._parse(observation)
        self._observe(obs, episode_start)
        assert self._n_envs is not None
        chunk = self._start_infer(np.arange(self._n_envs), deterministic)()
        self._clear_plans()
        return self._output(chunk, observation, self.config.state_key, batched)


    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> list[int]:
        """Build (compile and capture) the sampling graphs for ``batch_sizes`` (numbers of envs) now, so the first
        :meth:`predict` at those sizes does not wait; return the sizes built.

        Logs one line first ("compiling the sampling graph for batch 1 ..."); a first :meth:`predict` without warmup
        logs the same line. Nothing to build (returns ``[]``) on the CPU, with ``model.cuda_graphs`` off, for sizes
        already built, or for a shared-inference stand-in (the parent process warms its own model up).
        """
        sizes = list(batch_sizes)
        bad = [b for b in sizes if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0]
        if bad or not sizes:
            raise ValueError(f"warmup batch_sizes must be positive ints, got {sizes!r}")
        build = getattr(self.model, "build_graphs", None)
        return [] if build is None else build([int(b) for b in sizes])


def check_execute_steps(value: Any, action_horizon: int) -> int | None:
    """``value`` if it is None or an int in [1, Ta]; otherwise a ValueError naming the range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= action_horizon:
        raise ValueError(
            f"execute_steps must be an int in [1, {action_horizon}] (the policy's action_horizon Ta) or None, "
            f"got {value!r}"
        )
    return int(value)


def check_temporal_ensemble(value: Any) -> float | None:
    """``value`` as a float if it is None or a finite number; otherwise a ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"temporal_ensemble must be a finite number m (weights exp(-m*i)) or None, got {value!r}")
    return float(value)


__all__ = ["DiffusionPolicyAgent", "PendingAction", "check_execute_steps", "check_temporal_ensemble"]
