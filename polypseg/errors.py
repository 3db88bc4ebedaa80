"""User-facing errors: each one is a single line that names the file or value and the fix.

The CLI prints a `PolypsegError` as one line on stderr and exits 2; anything else is a bug and is
allowed to crash with a traceback.
"""

from collections.abc import Iterable

_SHOWN = 5  # names listed in an error before "... and N more"


class PolypsegError(Exception):
    """An error the user caused and can fix; its message is one line."""


class ConfigError(PolypsegError):
    """A config file, key or value is wrong."""


class DataError(PolypsegError):
    """A data folder, image or mask is missing, unpaired or unreadable."""


class DownloadError(PolypsegError):
    """A download (data set, checkpoint, weights) failed."""


class WeightsUnavailable(PolypsegError):
    """Pretrained weights cannot be had here: no file, and the download failed."""


class CacheError(PolypsegError):
    """The feature cache cannot be written: a full disk, a read-only folder."""


class CheckpointError(PolypsegError):
    """A checkpoint file is truncated, corrupt or not for this encoder."""


class ModelError(PolypsegError):
    """A model URI cannot be resolved or loaded."""


class TrainingError(PolypsegError):
    """Training diverged (a NaN or infinite loss) or cannot start."""


class OutputError(PolypsegError):
    """An output path is a folder where a file belongs (or the reverse), or is not writable."""


class StoreError(PolypsegError):
    """A tracking store or study storage is damaged, unreachable, unsuitable or refuses writes."""


class ExportError(PolypsegError):
    """A model cannot be exported, or its export does not compute what the model computes."""


def first_line(err: BaseException, limit: int = 120) -> str:
    """An exception's first line, cut to `limit` characters, or its type when it says nothing."""
    text = str(err)
    return text.splitlines()[0][:limit] if text.strip() else type(err).__name__


def listing(names: Iterable[str]) -> str:
    """`a, b, c, d, e ... and 3 more`: what one error line can show of a list."""
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
