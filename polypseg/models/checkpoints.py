"""Pretrained weights on disk: Meta's official SAM checkpoints, downloaded once and verified.

A checkpoint is checked against the official MD5 before every use (a user's file too, when it
has an official file's size). Hashing up to 2.6 GB would slow every start, so an MD5 is
remembered with the file's identity (size, inode, mtime and ctime in ns: ctime cannot be set
back, as git and make judge files) in `checkpoints/digests.json`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.hub

from polypseg.atomic import write_json
from polypseg.caches import cache_home, file_digest
from polypseg.errors import PolypsegError, WeightsUnavailable, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfficialCheckpoint:
    file: str
    md5: str
    size: int

    @property
    def url(self) -> str:
        return f"https://dl.fbaipublicfiles.com/segment_anything/{self.file}"


SAM_CHECKPOINTS = {
    "vit_b": OfficialCheckpoint(
        "sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8", 375042383
    ),
    "vit_l": OfficialCheckpoint(
        "sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c", 1249524607
    ),
    "vit_h": OfficialCheckpoint(
        "sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6", 2564550879
    ),
}


RACY_NS = 2_000_000_000
DOWNLOAD_TIMEOUT_S = 30.0


def remembered_md5(path: Path) -> str:
    memo_path = cache_home() / "checkpoints" / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    stat, key = path.stat(), str(path.resolve())
    identity = [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]
    known = memo.get(key) if isinstance(memo.get(key), dict) else {}
    # A file changed within the clock's granularity of being hashed could keep its mtime
    # ("racy git"): trust only digests taken well after the file's last change.
    stamp = known.get("hashed_at_ns")
    if (
        known.get("identity") == identity
        and isinstance(stamp, int)
        and identity[2] < stamp - RACY_NS
    ):
        return str(known.get("md5"))
    hashed_at = time.time_ns()
    md5 = file_digest(path, "md5")
    memo[key] = {"identity": identity, "md5": md5, "hashed_at_ns": hashed_at}
    with contextlib.suppress(OSError):  # a read-only cache: verify in full next time too
        write_json(memo_path, memo)
    return md5


def verify(path: Path, official: OfficialCheckpoint) -> None:
    size = path.stat().st_size
    if size != official.size or remembered_md5(path) != official.md5:
        raise PolypsegError(
            f"checkpoint {path} is corrupt or truncated ({size} bytes; the official "
            f"{official.file} has {official.size} bytes and MD5 {official.md5}); delete it and "
            "download it again"
        )


def download(url: str, dest: Path) -> Path:
    """Fetch `url` to `dest`; torch hub writes a temporary file and renames it once complete."""
    # torch hub opens the URL without a timeout: a server that stops answering would hang the
    # command for good, so the sockets opened meanwhile give up after DOWNLOAD_TIMEOUT_S of silence.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        reason = getattr(err, "reason", None) or first_line(err, 100)
        raise WeightsUnavailable(
            f"cannot download {url} ({reason}); put the file at {dest} "
            "or set encoder.checkpoint to its path"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return dest


def resolve_sam_checkpoint(variant: str, checkpoint: str) -> Path:
    """The local path of a SAM checkpoint: "auto" (download once, verify) or a user's path."""
    official = SAM_CHECKPOINTS[variant]
    if checkpoint != "auto":
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"SAM checkpoint {path} not found; download {official.url} there or set "
                'encoder.checkpoint = "auto"'
            )
        if path.stat().st_size == official.size:
            verify(path, official)
        return path
    path = cache_home() / "checkpoints" / official.file
    if not path.is_file():
        log.info("downloading the SAM %s checkpoint to %s", variant, path)
        download(official.url, path)
    verify(path, official)
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise PolypsegError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first_line(err, 100)}); "
            "is it truncated or not a PyTorch checkpoint?"
        ) from None
    if not isinstance(state, dict):
        raise PolypsegError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state
