"""The cameras' split-sum BRDF table (envs.tasks.brdf_lut): its values, and pictures equal to SAPIEN's own table's
on the real renderer (CPU backend, lavapipe)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the -rf tasks)
from envs.tasks.base import RFTableTaskEnv
from envs.tasks.brdf_lut import brdf_lut
from task_checks import CAM_H, CAM_W


def test_table_has_the_split_sum_shape_and_limits() -> None:
    lut = brdf_lut()
    assert lut.shape == (128, 128, 2) and lut.dtype == np.float32 and not lut.flags.writeable
    assert lut.min() >= 0.0 and (lut.sum(axis=-1) <= 1.0 + 1e-5).all()  # scale + bias: no energy gained
    scale, bias = lut[..., 0], lut[..., 1]
    assert scale[-1, 0] == pytest.approx(1.0, abs=0.02) and bias[-1, 0] == pytest.approx(0.0, abs=0.01)  # smooth, head-on
    assert bias[0, 0] > 0.5 > scale[0, 0]  # smooth, grazing: Fresnel drives the reflection to 1 whatever F0
    assert (np.diff(scale[-1, :]) <= 1e-6).all()  # head-on, rougher surfaces reflect less
    finer = brdf_lut(size=128, samples=4096)  # more samples: the same table up to sampling noise
    assert np.abs(finer - lut).max() < 0.02


def _pictures(brdf: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, int]:
    monkeypatch.setattr(RFTableTaskEnv, "brdf_lut", brdf)
    env = gym.make("LiftBarrier-rf", obs_mode="rgb", camera_width=CAM_W, camera_height=CAM_H, render_mode="rgb_array")
    try:
        u = env.unwrapped
        installed = sum(len(cam.camera._render_cameras) for cam in (*u._sensors.values(), *u._human_render_cameras.values()))
        frames = []
        for seed in (0, 1):
            obs, _ = env.reset(seed=seed, options={"reconfigure": True})
            action = {key: np.zeros(space.shape, np.float32) for key, space in env.action_space.spaces.items()}
            for _ in range(3):
                obs, *_ = env.step(action)
            cams = [obs["sensor_data"][c]["rgb"][0].numpy().ravel() for c in sorted(obs["sensor_data"])]
            frames.append(np.concatenate([*cams, env.render()[0].numpy().ravel()]))
        return np.stack(frames), installed
    finally:
        env.close()


@pytest.mark.slow
def test_pictures_equal_those_with_sapiens_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.tasks.base as base

    calls: list[int] = []
    real = base.install_brdf_lut
    monkeypatch.setattr(base, "install_brdf_lut", lambda cameras: calls.append(real(cameras)) or calls[-1])
    ours, cameras = _pictures(True, monkeypatch)
    assert calls and all(n == cameras == 4 for n in calls)  # 3 sensor cameras + the render camera, every reconfigure
    calls.clear()
    sapiens, _ = _pictures(False, monkeypatch)
    assert not calls  # switched off: SAPIEN generates its table
    assert ours.std() > 5  # real pictures
    np.testing.assert_array_equal(ours, sapiens)
