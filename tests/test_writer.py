"""Writing datasets: chunking, temporary name and rename, nothing left behind on failure, bad episodes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from rf_dp_agents.data import DatasetError, ReplayBuffer, ZarrWriter
from rf_dp_agents.data.writer import IMAGE_CHUNK_BYTES, time_chunk_length


def episode(n, hw=(240, 320), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 256, (n, 3, *hw), dtype=np.uint8),
        "state": rng.standard_normal((n, 8)).astype(np.float32),
        "action": rng.standard_normal((n, 8)).astype(np.float32),
    }


def test_image_chunks_are_about_two_megabytes(tmp_path):
    path = tmp_path / "d.zarr"
    with ZarrWriter(path) as writer:
        writer.add_episode(episode(12))
    img = zarr.open_group(str(path), mode="r")["data"]["img"]
    frame = 3 * 240 * 320
    assert img.chunks == (time_chunk_length((3, 240, 320), 1), 3, 240, 320)
    assert IMAGE_CHUNK_BYTES / 2 <= img.chunks[0] * frame <= IMAGE_CHUNK_BYTES
    assert img.compressors[0].cname.value == "zstd"


def test_final_name_appears_only_on_close(tmp_path):
    path = tmp_path / "d.zarr"
    writer = ZarrWriter(path)
    writer.add_episode(episode(3, hw=(4, 4)))
    assert not path.exists() and writer.tmp_path.exists()
    writer.close()
    assert path.exists() and not writer.tmp_path.exists()
    assert ReplayBuffer.open(path).n_steps == 3


def test_exception_leaves_nothing(tmp_path):
    path = tmp_path / "d.zarr"
    with pytest.raises(RuntimeError):
        with ZarrWriter(path) as writer:
            writer.add_episode(episode(3, hw=(4, 4)))
            raise RuntimeError("crash while converting")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_refuses_by_default(tmp_path):
    path = tmp_path / "d.zarr"
    with ZarrWriter(path) as writer:
        writer.add_episode(episode(3, hw=(4, 4)))
    with pytest.raises(FileExistsError, match="already exists"):
        ZarrWriter(path)
    with ZarrWriter(path, overwrite=True) as writer:
        writer.add_episode(episode(5, hw=(4, 4)))
    assert ReplayBuffer.open(path).n_steps == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_bad_episodes(tmp_path):
    writer = ZarrWriter(tmp_path / "d.zarr")
    writer.add_episode(episode(3, hw=(4, 4)))
    bad_len = episode(3, hw=(4, 4))
    bad_len["action"] = bad_len["action"][:2]
    with pytest.raises(DatasetError, match="leading length"):
        writer.add_episode(bad_len)
    with pytest.raises(DatasetError, match="'img' has uint8"):
        writer.add_episode(episode(3, hw=(5, 4)))
    missing = episode(3, hw=(4, 4))
    missing.pop("state")
    with pytest.raises(DatasetError, match="differ from earlier"):
        writer.add_episode(missing)
    assert writer.n_episodes == 1
    writer.abort()
    with pytest.raises(DatasetError, match="no episodes"):
        ZarrWriter(tmp_path / "e.zarr").close()
    assert list(tmp_path.iterdir()) == []
