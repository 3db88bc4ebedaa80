"""Downloading an official checkpoint: the whole file under its name or nothing, and a server
that is unreachable or silent is one line naming the URL and what to do instead."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polypseg.errors import WeightsUnavailable
from polypseg.models import checkpoints

REFUSED = "http://127.0.0.1:1/sam_vit_b_01ec64.pth"  # nothing listens on port 1


def test_a_download_lands_whole_under_its_name(tmp_path: Path) -> None:
    source = tmp_path / "served.pth"
    source.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "cache" / "checkpoints" / "sam.pth"  # its folder does not exist yet
    assert checkpoints.download(source.as_uri(), dest) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["sam.pth"]


def test_an_unreachable_server_is_one_line_naming_the_url_and_the_fix(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoints" / "sam.pth"
    with pytest.raises(WeightsUnavailable) as raised:
        checkpoints.download(REFUSED, dest)
    message = str(raised.value)
    assert "\n" not in message
    assert REFUSED in message and "refused" in message and str(dest) in message
    assert "encoder.checkpoint" in message
    assert list(dest.parent.iterdir()) == []


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts the connection and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/sam.pth"


def test_a_silent_server_gives_up_after_the_timeout(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "DOWNLOAD_TIMEOUT_S", 0.5)
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="timed out"):
        checkpoints.download(silent_server, tmp_path / "sam.pth")
    assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() == before  # the timeout was only for the download
    assert list(tmp_path.iterdir()) == []


def test_a_failed_auto_download_leaves_nothing_in_the_cache(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = property(lambda official: f"http://127.0.0.1:1/{official.file}")
    monkeypatch.setattr(checkpoints.OfficialCheckpoint, "url", offline)
    with pytest.raises(WeightsUnavailable, match="cannot download .*sam_vit_b_01ec64.pth"):
        checkpoints.resolve_sam_checkpoint("vit_b", "auto")
    folder = isolated_cache / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []
