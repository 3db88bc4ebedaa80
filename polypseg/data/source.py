"""Where a config's data comes from: the Kaggle download, a local folder, or synthetic data."""

from __future__ import annotations

from pathlib import Path

from polypseg.caches import cache_folder
from polypseg.config import DataConfig
from polypseg.data.sets import KVASIR_HINT, download, find_dataset_root
from polypseg.data.synthetic import make_synthetic
from polypseg.errors import DownloadError
from polypseg.outputs import check_output_dir


def resolve_root(data: DataConfig) -> Path:
    """The folder holding `images/` and `masks/` for this config, downloading or generating it."""
    if data.source == "synthetic":
        name = f"n{data.synthetic_n}-seed{data.synthetic_seed}"
        root = Path(data.root) if data.root else cache_folder("synthetic") / name
        if not (root / "images").is_dir():
            option = "data.root" if data.root else None
            if option:  # a generated set lands only where an output may: not in a data set
                check_output_dir(root, option)
            make_synthetic(root, n=data.synthetic_n, seed=data.synthetic_seed, option=option)
        return root
    if data.source == "local":
        return find_dataset_root(data.root)
    try:
        return download("kvasir")
    except DownloadError as err:
        raise DownloadError(f"{err}; {KVASIR_HINT}") from None
