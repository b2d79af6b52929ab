"""Episode videos: tiling camera frames with labels and a status banner, mp4 written atomically and read back."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest

from rf_dp_agents.rollout.video import (
    BANNER_HEIGHT,
    MIN_TILE_HEIGHT,
    EpisodeVideoWriter,
    compose_frame,
    count_frames,
    episode_video_path,
    status_line,
    tile_frames,
)


def _cams(h: int = 48, w: int = 64) -> dict[str, np.ndarray]:
    colours = {"head_camera_global": 200, "head_camera_agent0": 100, "head_camera_agent1": 50}
    return {name: np.full((h, w, 3), v, dtype=np.uint8) for name, v in colours.items()}


def test_tile_frames_layout_and_scaling() -> None:
    tiled = tile_frames(_cams(), label=False)
    factor = -(-MIN_TILE_HEIGHT // 48)
    assert tiled.shape == (48 * factor, 3 * 64 * factor, 3)
    # global camera first, then the agents, left to right
    assert tiled[10, 10, 0] == 200
    assert tiled[10, 64 * factor + 10, 0] == 100
    assert tiled[10, 2 * 64 * factor + 10, 0] == 50
    labelled = tile_frames(_cams())
    assert not np.array_equal(labelled, tiled)  # the camera names are drawn


def test_tile_frames_wraps_rows_and_pads_sizes() -> None:
    cams = {f"c{i}": np.zeros((240, 320, 3), np.uint8) for i in range(5)}
    cams["small"] = np.zeros((100, 100, 3), np.uint8)
    tiled = tile_frames(cams, label=False)
    assert tiled.shape == (2 * 240, 4 * 320, 3)


def test_tile_frames_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="'head_camera_agent0'.*float32"):
        tile_frames({"head_camera_agent0": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match="at least one"):
        tile_frames({})


def test_status_line_and_banner() -> None:
    assert status_line(12, 400, {"success": False, "success_strict": True}) == (
        "step 12/400 | success: no | success_strict: YES"
    )
    frame = compose_frame(_cams(), 3, 10, {"success": True})
    assert frame.shape[0] % 16 == 0 and frame.shape[1] % 16 == 0
    plain = compose_frame(_cams(), 3, 10, {"success": False})
    assert frame.shape == plain.shape
    # the banner turns green on success
    assert frame[2, 2, 1] > frame[2, 2, 0] and plain[2, 2, 1] == plain[2, 2, 0]
    assert not np.array_equal(frame[:BANNER_HEIGHT], plain[:BANNER_HEIGHT])


def test_video_writer_round_trip(tmp_path) -> None:
    path = episode_video_path(tmp_path / "videos", "LiftBarrier-rf", 7)
    assert path.parent.name == "LiftBarrier-rf"
    frames = [compose_frame(_cams(), t, 5, {"success": t == 4}) for t in range(5)]
    with EpisodeVideoWriter(path, fps=10) as writer:
        for f in frames:
            writer.append(f)
    assert writer.frames == 5
    assert count_frames(path) == 5
    first = imageio.get_reader(str(path)).get_data(0)
    assert first.shape == frames[0].shape
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_video_writer_errors_leave_no_file(tmp_path) -> None:
    path = tmp_path / "ep.mp4"
    with pytest.raises(ValueError, match="frame 1 has shape"):
        with EpisodeVideoWriter(path) as writer:
            writer.append(np.zeros((32, 32, 3), np.uint8))
            writer.append(np.zeros((16, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="must end in .mp4"):
        EpisodeVideoWriter(tmp_path / "ep.avi")
