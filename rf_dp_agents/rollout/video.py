"""Episode videos: camera frames tiled into one image with a status banner, written as mp4 with imageio.

A video frame is the global camera followed by the per-agent cameras, tiled left to right (wrapping after
``columns`` tiles), each tile labelled with its camera name, under a banner with the step count and the
state of every success rule. Small camera images are scaled up (nearest neighbour) so that the text stays
legible. :class:`EpisodeVideoWriter` writes to a temporary file and renames it on close.

This module imports no simulator code (mani_skill, sapien, envs).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import cv2
import imageio.v2 as imageio
import numpy as np

MIN_TILE_HEIGHT = 192
"""Tiles smaller than this are scaled up by an integer factor to at least this height."""
BANNER_HEIGHT = 28
"""Height in pixels of the status banner above the tiles."""
MACRO_BLOCK = 16
"""Frames are padded to a multiple of this so every codec accepts them unchanged."""


def _check_image(name: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"camera {name!r}: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return image


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    thickness = max(1, int(round(scale * 1.5)))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def _fit_scale(text: str, width: int, height: int, max_scale: float = 0.6) -> float:
    """Largest font scale (<= max_scale) at which ``text`` fits in ``width`` x ``height`` pixels."""
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
    return max(0.25, min(max_scale, (width - 8) / max(w, 1), (height - 8) / max(h, 1)))


def tile_frames(images: Mapping[str, np.ndarray], columns: int | None = None, label: bool = True) -> np.ndarray:
    """Tile camera images ``{name: uint8 (H, W, 3)}`` in the given order into one uint8 image.

    Images of different sizes are padded to the largest; ``columns`` defaults to all in one row
    (up to 4 per row). Each tile is scaled up to at least :data:`MIN_TILE_HEIGHT` pixels high.
    """
    if not images:
        raise ValueError("tile_frames needs at least one camera image")
    checked = [(name, _check_image(name, img)) for name, img in images.items()]
    tile_h = max(img.shape[0] for _, img in checked)
    tile_w = max(img.shape[1] for _, img in checked)
    factor = max(1, math.ceil(MIN_TILE_HEIGHT / tile_h))
    tile_h, tile_w = tile_h * factor, tile_w * factor
    n = len(checked)
    cols = columns or min(n, 4)
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * tile_h, cols * tile_w, 3), dtype=np.uint8)
    for k, (name, img) in enumerate(checked):
        if factor > 1:
            img = cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
        r, c = divmod(k, cols)
        y, x = r * tile_h, c * tile_w
        canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
        if label:
            scale = _fit_scale(name, tile_w, 24, max_scale=0.45)
            (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 1.5))))
            canvas[y : y + th + base + 6, x : x + min(tw + 8, tile_w)] //= 3  # darken behind the label
            _put_text(canvas, name, (x + 4, y + th + 3), scale, (255, 255, 255))
    return canvas


def status_line(step: int, max_steps: int | None, success: Mapping[str, bool]) -> str:
    """Banner text: ``step 12/400 | success: no | success_strict: no``."""
    head = f"step {step}" + (f"/{max_steps}" if max_steps else "")
    parts = [head] + [f"{rule}: {'YES' if ok else 'no'}" for rule, ok in success.items()]
    return " | ".join(parts)


def add_banner(image: np.ndarray, text: str, highlight: bool = False) -> np.ndarray:
    """``image`` with a :data:`BANNER_HEIGHT` strip on top holding ``text`` (green background if ``highlight``)."""
    image = _check_image("frame", image)
    banner = np.full((BANNER_HEIGHT, image.shape[1], 3), (20, 110, 40) if highlight else (30, 30, 30), dtype=np.uint8)
    scale = _fit_scale(text, image.shape[1], BANNER_HEIGHT)
    _put_text(banner, text, (6, BANNER_HEIGHT - 9), scale, (255, 255, 255))
    return np.concatenate([banner, image], axis=0)


def pad_to_block(image: np.ndarray, block: int = MACRO_BLOCK) -> np.ndarray:
    """Pad ``image`` (H, W, 3) with black at the bottom/right to multiples of ``block`` pixels."""
    h, w = image.shape[:2]
    ph, pw = (-h) % block, (-w) % block
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)))


def compose_frame(
    images: Mapping[str, np.ndarray], step: int, max_steps: int | None, success: Mapping[str, bool]
) -> np.ndarray:
    """One video frame: tiled cameras under a banner with the step count and success state, block-padded."""
    tiled = tile_frames(images)
    frame = add_banner(tiled, status_line(step, max_steps, success), highlight=any(success.values()))
    return pad_to_block(frame)


class EpisodeVideoWriter:
    """Write frames of one episode to ``path`` (mp4, H.264 via imageio-ffmpeg), atomically on :meth:`close`.

    Frames go to a temporary sibling file that is renamed to ``path`` when the writer closes without error;
    all frames must have the shape of the first one.
    """

    def __init__(self, path: str | os.PathLike, fps: int = 20) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"video path {self.path} must end in .mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}.mp4")
        self.fps = int(fps)
        self.frames = 0
        self._shape: tuple[int, ...] | None = None
        self._writer = imageio.get_writer(
            str(self._tmp), fps=self.fps, codec="libx264", macro_block_size=MACRO_BLOCK, quality=7,
            ffmpeg_log_level="error",
        )

    def append(self, frame: np.ndarray) -> None:
        """Add one uint8 (H, W, 3) frame."""
        frame = _check_image("frame", frame)
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"{self.path}: frame {self.frames} has shape {frame.shape}, earlier frames {self._shape}")
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        self._writer.close()
        if self.frames == 0:
            self._tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: no frames were written")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "EpisodeVideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in the video at ``path``, by decoding it."""
    reader = imageio.get_reader(str(path))
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


def episode_video_path(video_dir: str | os.PathLike, task: str, seed: int) -> Path:
    """Where the video of the episode with ``seed`` goes: ``<video_dir>/<task>/<task>_seed<seed>.mp4``."""
    return Path(video_dir) / task / f"{task}_seed{seed}.mp4"


__all__ = [
    "BANNER_HEIGHT",
    "EpisodeVideoWriter",
    "MIN_TILE_HEIGHT",
    "add_banner",
    "compose_frame",
    "count_frames",
    "episode_video_path",
    "pad_to_block",
    "status_line",
    "tile_frames",
]
