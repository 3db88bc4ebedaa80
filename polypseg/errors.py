"""User-facing errors: each one is a single line that names the file or value and the fix.

The CLI prints a `PolypsegError` as one line on stderr and exits 2; anything else is a bug and is
allowed to crash with a traceback. A subclass exists only where some code catches it apart from
the rest: a data error named later, a download with a local-copy hint added, missing weights
that fall back to the next encoder, a store fault that stops a study.
"""

from collections.abc import Iterable

_SHOWN = 5  # names listed in an error before "... and N more"


class PolypsegError(Exception):
    """An error the user caused and can fix; its message is one line."""


class DataError(PolypsegError):
    """A data folder, image or mask is missing, unpaired or unreadable."""


class DownloadError(PolypsegError):
    """A download (data set, checkpoint, weights) failed."""


class WeightsUnavailable(PolypsegError):
    """Pretrained weights cannot be had here: no file, and the download failed."""


class StoreError(PolypsegError):
    """A tracking store or study storage is damaged, unreachable, unsuitable or refuses writes."""


def first_line(err: BaseException, limit: int = 120) -> str:
    """An exception's first line, cut to `limit` characters, or its type when it says nothing."""
    text = str(err)
    return text.splitlines()[0][:limit] if text.strip() else type(err).__name__


def shortened(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters with "..." when longer: for a message or a tag."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing(names: Iterable[str]) -> str:
    """`a, b, c, d, e ... and 3 more`: what one error line can show of a list."""
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
