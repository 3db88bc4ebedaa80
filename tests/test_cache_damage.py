"""The feature cache under damage and faults: a cheap sound check on every hit, the full check
behind `verify`, a full disk as one line, and the leftovers of killed builds removed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from polypseg.data.pairs import list_pairs
from polypseg.errors import DataError, PolypsegError
from polypseg.features import builds, encode, entry, npy
from polypseg.features.cache import FeatureCache
from polypseg.features.npy import NpyWriter
from polypseg.models.encoders import encoder_architecture
from polypseg.processes import Worker


@pytest.fixture
def data(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "set"))


@pytest.fixture
def encoder():
    return encoder_architecture("resnet_tiny")


def _get(cache: FeatureCache, encoder, root: Path, verify: bool = False):
    return cache.get(
        encoder, list_pairs(root), image_size=64, batch_size=5, progress=False, verify=verify
    )


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_hit_never_rereads_the_arrays_in_full(data, encoder, tmp_path, monkeypatch) -> None:
    cache = FeatureCache(tmp_path / "fc")
    first = _get(cache, encoder, data)

    def no_full_hash(path: Path, *args: object) -> str:
        raise AssertionError(f"a cache hit re-hashed {path} in full")

    monkeypatch.setattr(entry, "file_digest", no_full_hash)
    second = _get(cache, encoder, data)
    assert encoder.images_encoded == 12 and second.directory == first.directory


def test_a_truncated_array_is_detected_on_load_and_rebuilt(data, encoder, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "fc")
    first = _get(cache, encoder, data)
    reference = np.array(first.features)
    target = first.directory / "masks.npy"
    del first
    with target.open("r+b") as handle:
        handle.truncate(target.stat().st_size - 1)
    rebuilt = _get(cache, encoder, data)
    assert encoder.images_encoded == 24
    np.testing.assert_array_equal(np.array(rebuilt.features), reference)


def test_damage_inside_an_array_is_found_by_verify(
    data, encoder, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(npy, "SAMPLE_BYTES", 1024)  # so a 49 kB array has an unsampled middle
    cache = FeatureCache(tmp_path / "fc")
    first = _get(cache, encoder, data)
    reference = np.array(first.features)
    target = first.directory / "features.npy"
    del first
    _flip(target, target.stat().st_size // 2)
    _get(cache, encoder, data)
    assert encoder.images_encoded == 12  # the cheap check reads the ends, not the middle
    verified = _get(cache, encoder, data, verify=True)
    assert encoder.images_encoded == 24
    assert "does not match its recorded SHA-256" in caplog.text
    np.testing.assert_array_equal(np.array(verified.features), reference)


@pytest.mark.parametrize(
    "edit",
    [
        lambda index: [index],  # valid JSON of the wrong shape
        lambda index: {**index, "names": index["names"][::-1]},  # rows relabelled
        lambda index: {**index, "digest": "0" * 64},
        lambda index: "{not json",
    ],
    ids=["list", "edited", "digest", "not-json"],
)
def test_a_damaged_index_takes_the_rebuild_path(data, encoder, tmp_path, edit, caplog) -> None:
    cache = FeatureCache(tmp_path / "fc")
    folder = _get(cache, encoder, data).directory
    index_path = folder / "index.json"
    edited = edit(json.loads(index_path.read_text()))
    index_path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    rebuilt = _get(cache, encoder, data)
    assert encoder.images_encoded == 24 and rebuilt.directory == folder
    assert "is corrupt" in caplog.text and "rebuilding it" in caplog.text


def test_verify_passes_an_intact_entry_without_encoding(data, encoder, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "fc")
    _get(cache, encoder, data)
    _get(cache, encoder, data, verify=True)
    assert encoder.images_encoded == 12


def test_too_little_free_space_is_one_line_before_writing(
    data, encoder, tmp_path, monkeypatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(encode.shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
    with pytest.raises(PolypsegError, match=r"needs 0\.\d\d GB in .* but only 0\.00 GB are free"):
        _get(FeatureCache(tmp_path / "fc"), encoder, data)
    assert not any((tmp_path / "fc").iterdir())  # no entry, no temporary folder


def test_a_write_error_mid_build_is_one_line_and_leaves_nothing(
    data, encoder, tmp_path, monkeypatch
) -> None:
    original, calls = NpyWriter.write, {"n": 0}

    def fills_the_disk(self: NpyWriter, block: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, block)

    monkeypatch.setattr(NpyWriter, "write", fills_the_disk)
    with pytest.raises(PolypsegError, match="No space left on device") as err:
        _get(FeatureCache(tmp_path / "fc"), encoder, data)
    assert "\n" not in str(err.value) and "POLYPSEG_CACHE" in str(err.value)
    assert not any((tmp_path / "fc").iterdir())


def test_an_unreadable_image_in_a_loader_worker_is_one_line(data, encoder, tmp_path) -> None:
    pairs = list_pairs(data)  # listed (and checked) while whole; damaged before it is encoded
    victim = sorted((data / "images").iterdir())[-1]  # the last batch: decoded in a worker
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])  # a valid header, half the scan data
    with pytest.raises(DataError, match=f"cannot decode image {victim}") as err:
        FeatureCache(tmp_path / "fc").get(encoder, pairs, 64, batch_size=5, progress=False)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def _leftover(directory: Path, name: str, owner: dict | None, age_s: float = 0) -> Path:
    folder = directory / name
    folder.mkdir(parents=True)
    (folder / "features.npy").write_bytes(b"\0" * 64)
    if owner is not None:
        (folder / builds.OWNER).write_text(json.dumps(owner))
    then = time.time() - age_s
    for path in (*folder.iterdir(), folder):
        os.utime(path, (then, then))
    return folder


def test_stale_build_folders_are_removed_at_the_next_build(data, encoder, tmp_path) -> None:
    directory = tmp_path / "fc"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = Worker.current()
    dead_owner = Worker(me.host, gone.pid, 1.0, me.machine).tags()
    dead = _leftover(directory, ".e1.dead", dead_owner)
    old = _leftover(directory, ".e2.old", None, age_s=builds.STALE_AFTER_S + 60)
    live = _leftover(directory, ".e3.live", me.tags())
    remote_owner = Worker("elsewhere", 1, 0.0, "another-machine").tags()
    remote = _leftover(directory, ".e4.remote", remote_owner, age_s=60)
    _get(FeatureCache(directory), encoder, data)
    assert not dead.exists() and not old.exists()
    assert live.exists() and remote.exists()  # a live builder, a young one on another host


KILLED_BUILD = """
import sys, time
from polypseg.data.pairs import list_pairs
from polypseg.features.cache import FeatureCache
from polypseg.models.encoders import encoder_architecture
encoder = encoder_architecture("resnet_tiny")
forward = encoder.backbone.forward
def slow(x):
    time.sleep(0.5)
    return forward(x)
encoder.backbone.forward = slow
FeatureCache(sys.argv[1]).get(encoder, list_pairs(sys.argv[2]), 64, batch_size=2, progress=False)
"""


def test_a_build_killed_with_sigkill_is_cleaned_up_by_the_next(data, encoder, tmp_path) -> None:
    directory = tmp_path / "fc"
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(KILLED_BUILD))
    child = subprocess.Popen([sys.executable, str(script), str(directory), str(data)])
    deadline = time.monotonic() + 60
    while not list(directory.glob(f".*/{builds.OWNER}")) and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")]  # left behind
    _get(FeatureCache(directory), encoder, data)
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
