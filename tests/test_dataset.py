"""SequenceDataset: batch layout, padding at episode edges, split, normaliser fit on training episodes only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rf_dp_agents.data import DatasetError, SequenceDataset, ZarrWriter


@pytest.fixture
def dataset_path(tmp_path):
    path = tmp_path / "d.zarr"
    with ZarrWriter(path) as writer:
        start = 0
        for n in (20, 12, 30, 25):
            steps = np.arange(start, start + n, dtype=np.float32)
            writer.add_episode(
                {
                    "img": np.broadcast_to((steps % 256).astype(np.uint8)[:, None, None, None], (n, 3, 4, 5)).copy(),
                    "state": np.repeat(steps[:, None], 8, axis=1),
                    "action": np.repeat(steps[:, None] + 0.5, 8, axis=1),
                }
            )
            start += n
    return path


def test_batch_layout_and_padding(dataset_path):
    ds = SequenceDataset(dataset_path, obs_horizon=2, pred_horizon=16, action_horizon=8, val_ratio=0.0)
    assert ds.n_train == sum(n - 16 + 1 + 1 + 7 for n in (20, 12, 30, 25))
    assert ds.shapes == {"img": (3, 4, 5), "state": (8,), "action": (8,)}
    batch = ds.get_batch(torch.arange(ds.n_train))
    assert batch["img"].shape == (ds.n_train, 2, 3, 4, 5) and batch["img"].dtype == torch.uint8
    assert batch["state"].shape == (ds.n_train, 2, 8) and batch["action"].shape == (ds.n_train, 16, 8)
    # The first window of episode 0 repeats step 0 once before it (pad_before = To - 1).
    assert batch["state"][0, :, 0].tolist() == [0.0, 0.0]
    assert batch["action"][0, :3, 0].tolist() == [0.5, 0.5, 1.5]
    # Observations are the first To steps of the window the actions cover.
    torch.testing.assert_close(batch["action"][:, :2, 0] - 0.5, batch["state"][:, :, 0])
    # Each item is the matching row of a batch.
    item = ds[5]
    torch.testing.assert_close(item["action"], batch["action"][5])


def test_split_and_normalizer(dataset_path):
    ds = SequenceDataset(dataset_path, val_ratio=0.25, seed=0)
    assert ds.train_mask.sum() == 3 and ds.val_mask.sum() == 1
    val_steps = ds.val_sampler.indices(np.arange(ds.n_val))
    train_steps = ds.train_sampler.indices(np.arange(ds.n_train))
    assert not set(val_steps.ravel()) & set(train_steps.ravel())
    norm = ds.fit_normalizer()
    train_state = ds.state[np.unique(train_steps)]
    y = norm.normalize("state", train_state)
    assert float(y.min()) == pytest.approx(-1.0) and float(y.max()) == pytest.approx(1.0)
    assert len(ds.content_hash) == 32


def test_nan_and_short_episodes(tmp_path):
    path = tmp_path / "nan.zarr"
    with ZarrWriter(path) as writer:
        action = np.zeros((10, 8), np.float32)
        action[4, 2] = np.nan
        writer.add_episode({"img": np.zeros((10, 3, 2, 2), np.uint8), "state": np.zeros((10, 8), np.float32), "action": action})
    with pytest.raises(DatasetError, match="data/action has NaN or inf at step 4"):
        SequenceDataset(path)
    short = tmp_path / "short.zarr"
    with ZarrWriter(short) as writer:
        writer.add_episode({"img": np.zeros((3, 3, 2, 2), np.uint8), "state": np.zeros((3, 8), np.float32), "action": np.zeros((3, 8), np.float32)})
    with pytest.raises(DatasetError, match="no training windows"):
        SequenceDataset(short, val_ratio=0.0)


def test_extra_camera_arrays(tmp_path):
    path = tmp_path / "two_cams.zarr"
    rng = np.random.default_rng(0)
    with ZarrWriter(path) as writer:
        for n in (20, 25):
            writer.add_episode({
                "img": rng.integers(0, 256, (n, 3, 4, 5), dtype=np.uint8),
                "img_head_camera_global": rng.integers(0, 256, (n, 3, 4, 5), dtype=np.uint8),
                "state": rng.standard_normal((n, 8)).astype(np.float32),
                "action": rng.standard_normal((n, 8)).astype(np.float32),
            })
    cams = ("img", "img_head_camera_global")
    ds = SequenceDataset(path, val_ratio=0.0, camera_keys=cams)
    assert ds.shapes["img_head_camera_global"] == (3, 4, 5)
    batch = ds.get_batch(torch.arange(4))
    assert set(batch) == {*cams, "state", "action"}
    plain = SequenceDataset(path, val_ratio=0.0)
    torch.testing.assert_close(batch["img"], plain.get_batch(torch.arange(4))["img"])
    assert not torch.equal(batch["img"], batch["img_head_camera_global"])
    with pytest.raises(DatasetError, match="missing array data/img_wrist"):
        SequenceDataset(path, camera_keys=("img", "img_wrist"))


def test_get_batch_into_given_buffers(dataset_path):
    """``out=`` gathers into the caller's tensors (no new ones), equal to a plain get_batch, for both splits."""
    ds = SequenceDataset(dataset_path, obs_horizon=2, pred_horizon=16, action_horizon=8, val_ratio=0.25)
    for split, n in (("train", ds.n_train), ("val", ds.n_val)):
        ids = torch.arange(n).flip(0)[:5]
        shapes = ds.batch_shapes(5)
        assert shapes == {"img": (5, 2, 3, 4, 5), "state": (5, 2, 8), "action": (5, 16, 8)}
        plain = ds.get_batch(ids, split)
        out = {key: torch.full(shape, 7, dtype=plain[key].dtype) for key, shape in shapes.items()}
        got = ds.get_batch(ids, split, out=out)
        assert got is out and all(torch.equal(out[k], plain[k]) for k in plain)
