"""Reading datasets: zarr formats 2 and 3, directory and zip stores, RoboFactory's head_camera, bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from rf_dp_agents.data import DatasetError, ReplayBuffer, ZarrWriter


def make_episodes(lengths, hw=(6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "img": rng.integers(0, 256, (n, 3, *hw), dtype=np.uint8),
            "state": rng.standard_normal((n, 8)).astype(np.float32),
            "action": rng.standard_normal((n, 8)).astype(np.float32),
        }
        for n in lengths
    ]


def write_raw_format2(path: Path, arrays: dict, ends, image_name="head_camera"):
    """Write a store the way RoboFactory's zarr 2.x converter lays it out (format 2, Blosc zstd)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    comp = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.NOSHUFFLE)
    for key, value in arrays.items():
        name = image_name if key == "img" else key
        data.create_array(name, data=value, chunks=(100, *value.shape[1:]), compressors=comp)
    root.create_group("meta").create_array("episode_ends", data=np.asarray(ends, dtype=np.int64), chunks=(len(ends),))


@pytest.mark.parametrize("fmt", [2, 3])
def test_round_trip(tmp_path, fmt):
    episodes = make_episodes([5, 9, 3])
    path = tmp_path / "d.zarr"
    with ZarrWriter(path, zarr_format=fmt) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == fmt
    for in_memory in (True, False):
        buf = ReplayBuffer.open(path, in_memory=in_memory)
        assert buf.n_episodes == 3 and buf.n_steps == 17
        np.testing.assert_array_equal(buf.episode_ends, [5, 14, 17])
        np.testing.assert_array_equal(buf.episode_lengths, [5, 9, 3])
        assert isinstance(buf["img"], np.ndarray) == in_memory
        for i, ep in enumerate(episodes):
            got = buf.get_episode(i)
            for key in ("img", "state", "action"):
                np.testing.assert_array_equal(got[key], ep[key])


def test_format2_head_camera_and_zip(tmp_path):
    eps = make_episodes([4, 6], hw=(5, 7))
    arrays = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    path = tmp_path / "LiftBarrier-rf_Agent0_2.zarr"
    write_raw_format2(path, arrays, [4, 10])
    buf = ReplayBuffer.open(path)
    assert set(buf.keys) == {"img", "state", "action"}
    np.testing.assert_array_equal(buf["img"], arrays["img"])
    # The same store zipped, as .zarr.zip.
    zpath = tmp_path / "d.zarr.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in path.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(path).as_posix())
    zbuf = ReplayBuffer.open(zpath)
    np.testing.assert_array_equal(zbuf["state"], arrays["state"])
    np.testing.assert_array_equal(zbuf.get_episode(1)["img"], eps[1]["img"])


def test_channel_last_images_are_exposed_channel_first(tmp_path):
    eps = make_episodes([3])
    arrays = dict(eps[0])
    arrays["img"] = np.ascontiguousarray(arrays["img"].transpose(0, 2, 3, 1))
    write_raw_format2(tmp_path / "d.zarr", arrays, [3], image_name="img")
    buf = ReplayBuffer.open(tmp_path / "d.zarr")
    np.testing.assert_array_equal(buf["img"], eps[0]["img"])


def _store_with(tmp_path, arrays, ends, name="bad.zarr"):
    path = tmp_path / name
    write_raw_format2(path, arrays, ends, image_name="img")
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("state"), "missing array data/state"),
        (lambda a: a.pop("img"), r"data/img \(or data/head_camera\)"),
        (lambda a: a.__setitem__("action", a["action"][:-1]), "disagree in length"),
        (lambda a: a.__setitem__("img", a["img"].astype(np.float32)), "must be uint8"),
        (lambda a: a.__setitem__("state", a["state"][:, :, None]), r"must be float \(N, D\)"),
    ],
)
def test_bad_arrays_name_key(tmp_path, mutate, message):
    arrays = {k: np.concatenate([e[k] for e in make_episodes([4, 4])]) for k in ("img", "state", "action")}
    mutate(arrays)
    path = _store_with(tmp_path, arrays, [4, 8])
    with pytest.raises(DatasetError, match=message) as info:
        ReplayBuffer.open(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "ends, message",
    [([4, 4], "strictly increasing"), ([5, 3], "strictly increasing"), ([4, 7], "ends at 7"), ([], "empty")],
)
def test_bad_episode_ends(tmp_path, ends, message):
    arrays = {k: np.concatenate([e[k] for e in make_episodes([4, 4])]) for k in ("img", "state", "action")}
    path = tmp_path / "e.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = root.create_group("data")
    for key, value in arrays.items():
        data.create_array(key, data=value)
    root.create_group("meta").create_array("episode_ends", data=np.asarray(ends, dtype=np.int64))
    with pytest.raises(DatasetError, match=message):
        ReplayBuffer.open(path)


def test_missing_meta_and_not_a_store(tmp_path):
    root = zarr.open_group(str(tmp_path / "m.zarr"), mode="w")
    root.create_group("data").create_array("img", data=np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "m.zarr")
    with pytest.raises(DatasetError, match="no such file"):
        ReplayBuffer.open(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a zarr store"):
        ReplayBuffer.open(tmp_path / "plain")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a zarr store"):
        ReplayBuffer.open(tmp_path / "notes.txt")


def test_empty_dataset(tmp_path):
    arrays = {"img": np.zeros((0, 3, 4, 4), np.uint8), "state": np.zeros((0, 8), np.float32), "action": np.zeros((0, 8), np.float32)}
    path = tmp_path / "empty.zarr"
    root = zarr.open_group(str(path), mode="w")
    data = root.create_group("data")
    for key, value in arrays.items():
        data.create_array(key, shape=value.shape, dtype=value.dtype, chunks=(1, *value.shape[1:]))
    root.create_group("meta").create_array("episode_ends", shape=(0,), dtype=np.int64, chunks=(1,))
    with pytest.raises(DatasetError, match="empty"):
        ReplayBuffer.open(path)


def _chunk_files(array_dir: Path) -> list[Path]:
    """The chunk files of one array directory (format 2 ``0.0`` or format 3 ``c/0/0``), in row order."""
    files = [f for f in array_dir.rglob("*") if f.is_file() and f.name not in (".zarray", ".zattrs", "zarr.json")]
    return sorted(files, key=lambda f: int(f.relative_to(array_dir).as_posix().replace("c/", "").split("/")[0].split(".")[0]))


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("keep", ["half", "all but the last byte"])
def test_truncated_chunk_names_file_array_and_chunk(tmp_path, fmt, in_memory, keep):
    """Blosc's decoder does not check its input's length (a chunk one byte short decodes from the memory after
    it), so the check is the chunk's size against its Blosc header, whatever the decoder does."""
    eps = make_episodes([150, 100])
    arrays = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    path = tmp_path / "t.zarr"
    if fmt == 2:
        write_raw_format2(path, arrays, [150, 250], image_name="img")  # chunks of 100 steps: 0.0, 1.0, 2.0
        chunk, coords, steps = path / "data" / "action" / "1.0", r"\(1, 0\)", "steps 100..199"
    else:
        with ZarrWriter(path, zarr_format=3) as writer:
            for ep in eps:
                writer.add_episode(ep)
        files = _chunk_files(path / "data" / "action")
        chunk, coords, steps = files[-1], rf"\({len(files) - 1}, 0\)", ""
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[: size // 2 if keep == "half" else size - 1])
    message = rf"{path}: array data/action: chunk {coords} \({chunk}, {steps}.*cannot be decoded"
    with pytest.raises(DatasetError, match=message):
        buf = ReplayBuffer.open(path, in_memory=in_memory)
        buf.get_episode(1)  # lazy arrays are read here
    if not in_memory:  # the intact episode still reads
        buf = ReplayBuffer.open(path, in_memory=False)
        np.testing.assert_array_equal(buf["state"][:10], arrays["state"][:10])


@pytest.mark.parametrize("fmt", [2, 3])
def test_deleted_chunk_is_an_error_not_zeros(tmp_path, fmt):
    eps = make_episodes([150, 100], hw=(48, 64))  # 2 MiB image chunks: 227 steps each, two chunks
    for ep in eps:
        ep["action"][:] = 0.0  # all-zero chunks are still written, so a missing one cannot be a legal empty one
    path = tmp_path / "z.zarr"
    with ZarrWriter(path, zarr_format=fmt) as writer:
        for ep in eps:
            writer.add_episode(ep)
    np.testing.assert_array_equal(ReplayBuffer.open(path)["action"], 0.0)
    files = _chunk_files(path / "data" / "img")
    assert len(files) > 1
    files[1].unlink()
    with pytest.raises(DatasetError, match=rf"{path}: array data/img: chunk \(1, 0, 0, 0\) \({files[1]}, steps .*is missing"):
        ReplayBuffer.open(path, in_memory=False)


def test_store_without_the_every_chunk_attribute_reads_missing_chunks_as_fill(tmp_path):
    """Stores written elsewhere (RoboFactory's converter) may omit all-zero chunks: they read as zeros."""
    arrays = {k: np.concatenate([e[k] for e in make_episodes([150, 100])]) for k in ("img", "state", "action")}
    arrays["action"][100:200] = 0.0
    path = tmp_path / "r.zarr"
    write_raw_format2(path, arrays, [150, 250], image_name="img")
    assert not (path / "data" / "action" / "1.0").exists()  # zarr's default skips the all-zero chunk
    np.testing.assert_array_equal(ReplayBuffer.open(path)["action"], arrays["action"])


def test_truncated_chunk_inside_a_zip_store(tmp_path):
    eps = make_episodes([150, 100])
    arrays = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    path = tmp_path / "d.zarr"
    write_raw_format2(path, arrays, [150, 250], image_name="img")
    chunk = path / "data" / "state" / "2.0"
    chunk.write_bytes(chunk.read_bytes()[:9])
    zpath = tmp_path / "d.zarr.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in path.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(path).as_posix())
    with pytest.raises(DatasetError, match=rf"array data/state: chunk \(2, 0\) \(data/state/2.0 inside {zpath}"):
        ReplayBuffer.open(zpath)


@pytest.mark.parametrize(
    "member, text",
    [("data/action/.zarray", "{oops"), ("data/action/.zarray", '{"zarr_format": 2, "shape": "ten"}'),
     ("data/.zgroup", "[]"), ("meta/episode_ends/.zarray", ""), (".zgroup", "nope")],
)
def test_corrupt_metadata_names_the_file(tmp_path, member, text):
    arrays = {k: np.concatenate([e[k] for e in make_episodes([4, 4])]) for k in ("img", "state", "action")}
    path = _store_with(tmp_path, arrays, [4, 8])
    (path / member).write_text(text)
    with pytest.raises(DatasetError, match=member.replace(".", r"\.")) as info:
        ReplayBuffer.open(path)
    assert str(path) in str(info.value)
