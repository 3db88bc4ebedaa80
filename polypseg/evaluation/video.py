"""`polypseg predict --video`: a colonoscopy video, frame by frame, as an overlay and a table.

Frames are decoded as a stream and predicted in batches; each is drawn into `<stem>_overlay.mp4`
(same size and rate, H.264) and gets one row of `<stem>_frames.csv`. PyAV, not imageio-ffmpeg:
its wheels ship FFmpeg, and decoding errors arrive as exceptions at their frame, where a pipe
from an `ffmpeg` subprocess makes a file that breaks off look like a shorter one. A broken file
keeps the frames read before the break and then is one `DataError`; frames over the pixel limit
are refused from the header; a frame size that changes is predicted at each frame's own size.
"""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from polypseg.atomic import atomic_path
from polypseg.data.images import pixel_problem
from polypseg.errors import DataError, first_line
from polypseg.evaluation.predict import PREDICTION_EXPERIMENT, log_prediction, tint
from polypseg.outputs import check_output_dir, check_outputs

BATCH_SIZE = 8
DEFAULT_RATE = Fraction(25)  # for the rare stream that states no frame rate at all
CSV_COLUMNS = ("frame", "time", "area", "max_probability", "polyp")


@dataclass
class VideoPrediction:
    """What `predict_video` wrote, how fast it went and the MLflow run it logged."""

    overlay: Path
    table: Path
    frames: int
    seconds: float
    frames_per_second: float
    run_id: str
    run_url: str


class FrameReader:
    """A video's (time, H×W×3 RGB frame), decoded one at a time; an error or fewer frames than
    announced ends the stream and is kept in `broken`."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as err:
            why = "it holds no video stream" if isinstance(err, IndexError) else first_line(err)
            raise DataError(f"{path} is not a video PyAV can read ({why})") from None
        self.stream.thread_type = "AUTO"
        self.rate = self.stream.average_rate or self.stream.guessed_rate or DEFAULT_RATE
        self.width, self.height = self.stream.width, self.stream.height
        self._refuse_large(self.width, self.height)
        self.expected = int(self.stream.frames or 0)  # 0: the container does not say
        self.broken: str | None = None

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        import av

        count = 0
        try:
            for frame in self.container.decode(self.stream):
                when = frame.time if frame.time is not None else count / float(self.rate)
                self._refuse_large(frame.width, frame.height)
                yield float(when), frame.to_ndarray(format="rgb24")
                count += 1
        except av.error.FFmpegError as err:
            self.broken = first_line(err)
        if self.broken is None and count < self.expected:
            self.broken = f"{self.expected} frames announced, the file ends"

    def _refuse_large(self, width: int, height: int) -> None:
        if problem := pixel_problem(width, height):
            self.container.close()
            raise DataError(f"video {self.path}: its frames are {problem}")

    def close(self) -> None:
        self.container.close()


class OverlayWriter:
    """An H.264 MP4 of RGB frames at a given size and rate (moov first: it plays as it loads)."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction) -> None:
        import av

        # mp4 named explicitly: the path is a temporary whose suffix says nothing.
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "faststart"})
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        # 4:2:0 wants even sides; odd ones keep their size in 4:4:4 rather than lose a pixel.
        self.stream.pix_fmt = "yuv420p" if width % 2 == height % 2 == 0 else "yuv444p"

    def write(self, rgb: np.ndarray) -> None:
        import av

        # A frame of another size (the stream's changed) is scaled to the stream's by `encode`.
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def _batches(reader: FrameReader, size: int) -> Iterator[list[tuple[float, np.ndarray]]]:
    for _, frames in itertools.groupby(reader, key=lambda item: item[1].shape):  # one size each
        while batch := list(itertools.islice(frames, size)):
            yield batch


def _run(predictor: Any, reader: FrameReader, writer: OverlayWriter, table: Any, bar) -> int:
    """Predict, draw and tabulate every frame; returns how many."""
    rows = csv.writer(table)
    rows.writerow(CSV_COLUMNS)
    task = bar.add_task(f"predicting {reader.path.name}", total=reader.expected or None)
    count = 0
    for batch in _batches(reader, BATCH_SIZE):
        probabilities = predictor.proba_batch([frame for _, frame in batch])
        for (when, frame), proba in zip(batch, probabilities, strict=True):
            mask = (proba >= predictor.threshold).astype(np.uint8)
            writer.write(tint(frame, mask))
            area, peak = float(mask.mean()), float(proba.max())
            rows.writerow([count, f"{when:.4f}", f"{area:.6f}", f"{peak:.6f}", int(area > 0)])
            count += 1
        bar.advance(task, len(batch))
    return count


def predict_video(
    model: str,
    video: str | Path,
    out_dir: str | Path,
    engine: str = "torch",
    tracking_uri: str | None = None,
    tta: str = "none",
) -> VideoPrediction:
    """Write `<stem>_overlay.mp4` and `<stem>_frames.csv` into `out_dir`, log one run."""
    from polypseg.config import check_choice
    from polypseg.evaluation.predictors import ENGINES, load_predictor
    from polypseg.progress import progress_bar
    from polypseg.tracking.store import setup

    video, out_dir = Path(video), check_output_dir(out_dir)
    check_choice("--engine", engine, ENGINES)
    if not video.is_file():
        raise DataError(f"video {video} does not exist")
    overlay, table = out_dir / f"{video.stem}_overlay.mp4", out_dir / f"{video.stem}_frames.csv"
    outputs = [(overlay, "the overlay"), (table, "the frame table")]
    check_outputs(outputs, out_dir, "choose another --out", inputs=[video])
    reader = FrameReader(video)  # a file that is no video is refused before the model loads
    try:
        setup(PREDICTION_EXPERIMENT, tracking_uri)
        predictor = load_predictor(model, engine, tta)
        with (
            atomic_path(overlay, option="--out") as tmp_video,
            atomic_path(table, option="--out") as tmp_table,
            tmp_table.open("w", newline="") as rows,
            progress_bar(transient=True) as bar,
        ):
            writer = OverlayWriter(tmp_video, reader.width, reader.height, reader.rate)
            start = time.perf_counter()
            try:
                frames = _run(predictor, reader, writer, rows, bar)
            finally:
                writer.close()
            if frames == 0:  # raised here, the empty overlay and table are not kept
                why = f" ({reader.broken})" if reader.broken else ""
                raise DataError(f"video {video} holds no frame to predict{why}")
            seconds = time.perf_counter() - start
            speed = frames / seconds if seconds > 0 else 0.0
    finally:
        reader.close()
    import mlflow

    params = {"video": str(video.resolve()), "engine": engine, "tta": tta, "n_frames": frames}

    def log() -> None:
        mlflow.log_metric("frames_per_second", speed)
        mlflow.log_artifact(str(table))

    run_id, run_url = log_prediction(predictor, video.stem, params, log)
    if reader.broken is not None:
        raise DataError(
            f"video {video} breaks off after {frames} frames ({reader.broken}); the frames read "
            f"are in {overlay} and {table}"
        )
    return VideoPrediction(overlay, table, frames, seconds, speed, run_id, run_url)
