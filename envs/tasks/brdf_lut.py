"""The split-sum BRDF lookup table of SAPIEN's camera shaders, computed here instead of by the renderer.

SAPIEN's shaders sample a ``BRDFLUT`` texture (the scale and bias of the split-sum approximation of image-based
specular light: Karis 2013, https://learnopengl.com/PBR/IBL/Specular-IBL). When no camera supplies one, the
renderer generates a 512x512 table with a shader at the first picture of each process: about 4 s on Mesa's
software Vulkan driver (lavapipe), the CPU rendering the tests and CPU machines use, against well under a second
for the rest of the first picture. :func:`install_brdf_lut` gives the cameras this module's table instead
(128x128, 1024 importance samples, computed once per process with NumPy in a fraction of a second).

In the -rf scenes the table multiplies an environment light that is zero, so pictures are the same, pixel for
pixel, with this table, with SAPIEN's or with a table of zeros (tested); it matters only to a scene with an
environment map, where this table matches the usual one to the accuracy of its sampling.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import numpy as np

LUT_SIZE = 128
"""Texels per side: columns are the roughness, rows cos(angle between normal and view), both (i + 0.5) / size."""
LUT_SAMPLES = 1024
"""Importance samples of the GGX lobe per texel (Hammersley points)."""
TEXTURE_NAME = "BRDFLUT"
"""Name of the table in SAPIEN's shaders (``samplerBRDFLUT``)."""


def _radical_inverse(i: np.ndarray) -> np.ndarray:
    """Van der Corput radical inverse in base 2 of the 32-bit integers ``i``, as float32 in [0, 1)."""
    b = i.astype(np.uint64)
    b = ((b << 16) | (b >> 16)) & 0xFFFFFFFF
    for shift, mask in ((1, 0x55555555), (2, 0x33333333), (4, 0x0F0F0F0F), (8, 0x00FF00FF)):
        b = ((b & mask) << shift) | ((b >> shift) & mask)
    return (b.astype(np.float64) / 2.0**32).astype(np.float32)


@lru_cache(maxsize=None)
def brdf_lut(size: int = LUT_SIZE, samples: int = LUT_SAMPLES) -> np.ndarray:
    """The table, float32 ``(size, size, 2)``: ``[NdotV row, roughness column] -> (scale, bias)`` of F0, so that
    the specular light is ``prefiltered * (F0 * scale + bias)``. Read-only, computed once per process."""
    if size < 2 or samples < 1:
        raise ValueError(f"brdf_lut needs size >= 2 and samples >= 1, got size={size}, samples={samples}")
    i = np.arange(samples)
    xi1, xi2 = (i / samples).astype(np.float32), _radical_inverse(i)
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    n_dot_v = coords[:, None]  # (size, 1): the rows
    view = np.stack([np.sqrt(1.0 - coords**2), np.zeros_like(coords), coords], axis=-1)  # (size, 3)
    out = np.empty((size, size, 2), np.float32)
    for col, roughness in enumerate(coords):
        a = roughness * roughness
        phi = 2.0 * np.pi * xi1
        cos_t = np.sqrt((1.0 - xi2) / (1.0 + (a * a - 1.0) * xi2))
        sin_t = np.sqrt(1.0 - cos_t * cos_t)
        half = np.stack([np.cos(phi) * sin_t, np.sin(phi) * sin_t, cos_t], axis=-1)  # (samples, 3), normal = +z
        v_dot_h = view @ half.T  # (size, samples)
        n_dot_l = np.maximum(2.0 * v_dot_h * half[None, :, 2] - view[:, 2:3], 0.0)
        v_dot_h = np.maximum(v_dot_h, 0.0)
        k = a / 2.0  # Schlick-GGX for image-based light
        geometry = (n_dot_v / (n_dot_v * (1 - k) + k)) * (n_dot_l / (n_dot_l * (1 - k) + k))
        visible = np.where(n_dot_l > 0, geometry * v_dot_h / (half[None, :, 2] * n_dot_v), 0.0)
        fresnel = (1.0 - v_dot_h) ** 5
        out[:, col, 0] = ((1.0 - fresnel) * visible).mean(axis=1)
        out[:, col, 1] = (fresnel * visible).mean(axis=1)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=None)
def _texture() -> Any:
    import sapien.render

    return sapien.render.RenderTexture(np.ascontiguousarray(brdf_lut()), 2, "R32G32Sfloat", address_mode="edge")


def install_brdf_lut(cameras: Iterable[Any]) -> int:
    """Give every SAPIEN render camera of ``cameras`` (ManiSkill sensors or human render cameras, before their
    first picture) the table, so the renderer does not generate its own; returns how many got it."""
    texture, count = _texture(), 0
    for camera in cameras:
        for component in getattr(camera.camera, "_render_cameras", ()):
            component.set_texture(TEXTURE_NAME, texture)
            count += 1
    return count


__all__ = ["LUT_SAMPLES", "LUT_SIZE", "TEXTURE_NAME", "brdf_lut", "install_brdf_lut"]
