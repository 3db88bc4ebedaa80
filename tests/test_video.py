"""`polypseg predict --video`: a video in, an overlay of the same size and rate and a per-frame
table out; a file that is no video, or breaks off, is one line (and keeps what was read)."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import mlflow
import numpy as np
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.evaluation.predictors import Predictor

MODEL = "models:/polypseg-eval@champion"  # registered by conftest's `registered_model`
RATE, SECONDS, WIDTH, HEIGHT = 25, 2, 96, 80


def write_video(path: Path, frames: int = RATE * SECONDS, faststart: bool = True) -> Path:
    """A synthetic clip: a bright disc drifting over a reddish background, H.264 in MP4."""
    options = {"movflags": "faststart"} if faststart else {}
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[...] = (150, 60 + i, 50)
            image[(y - 40) ** 2 + (x - 20 - i) ** 2 < 15**2] = (230, 190, 170)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as table:
        return list(csv.DictReader(table))


def test_a_video_gets_an_overlay_like_it_and_one_row_per_frame(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "clip.mp4")
    result = runner.invoke(app, ["predict", "--model", MODEL, "--video", str(clip), "--out", "o"])
    assert result.exit_code == 0, result.output
    overlay, table = tmp_path / "o" / "clip_overlay.mp4", tmp_path / "o" / "clip_frames.csv"
    assert result.stdout.split() == ["o/clip_overlay.mp4", "o/clip_frames.csv"]
    assert "50 frames in" in result.stderr and "frames/s" in result.stderr
    frames, rate = decode(clip)
    drawn, drawn_rate = decode(overlay)
    assert len(drawn) == len(frames) == RATE * SECONDS and drawn_rate == rate == RATE
    assert drawn[0].shape == (HEIGHT, WIDTH, 3)
    table_rows = rows(table)
    assert [int(r["frame"]) for r in table_rows] == list(range(len(frames)))
    assert float(table_rows[-1]["time"]) == pytest.approx((len(frames) - 1) / RATE)
    predictor = Predictor(MODEL)
    for frame, row in zip(frames, table_rows, strict=True):
        proba = predictor.proba(frame)  # one frame at a time: the batches change nothing
        mask = proba >= predictor.threshold
        assert float(row["area"]) == pytest.approx(mask.mean(), abs=2 / mask.size)
        assert float(row["max_probability"]) == pytest.approx(proba.max(), abs=1e-5)
        assert row["polyp"] == str(int(mask.any()))


def test_a_video_that_breaks_off_keeps_the_frames_before_the_break(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    whole = write_video(tmp_path / "whole.mp4").read_bytes()
    clip = tmp_path / "cut.mp4"
    clip.write_bytes(whole[: len(whole) * 6 // 10])
    result = runner.invoke(app, ["predict", "--model", MODEL, "--video", str(clip), "--out", "o"])
    line = one_error_line(result)
    assert str(clip) in line and "breaks off after" in line
    drawn, _ = decode(tmp_path / "o" / "cut_overlay.mp4")
    assert 0 < len(drawn) < RATE * SECONDS
    assert len(rows(tmp_path / "o" / "cut_frames.csv")) == len(drawn)


def test_a_text_file_named_mp4_is_one_line_and_writes_nothing(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    result = runner.invoke(app, ["predict", "--model", MODEL, "--video", str(fake), "--out", "o"])
    line = one_error_line(result)
    assert str(fake) in line and "not a video" in line
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_an_output_that_links_to_the_video_is_refused_and_the_video_kept(
    runner: CliRunner, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    before = clip.read_bytes()
    out = tmp_path / "o"
    out.mkdir()
    (out / "clip_overlay.mp4").symlink_to(clip)
    args = ["predict", "--model", MODEL, "--video", str(clip), "--out", str(out)]
    result = runner.invoke(app, args)
    assert "one of the inputs" in one_error_line(result)
    assert clip.read_bytes() == before


def test_predict_needs_images_or_a_video(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--model", MODEL, "--out", str(tmp_path)])
    assert "--video FILE" in one_error_line(result)
    both = ["predict", "--model", MODEL, "--out", str(tmp_path), "--video", "a.mp4", "b.jpg"]
    assert "takes no IMAGE" in one_error_line(runner.invoke(app, both))


def _raw_h264(path: Path, width: int, height: int, frames: int) -> bytes:
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = np.full((height, width, 3), (150, 60, 50), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def test_a_stream_whose_frame_size_changes_is_predicted_frame_by_frame(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    clip = tmp_path / "grows.h264"  # an elementary stream that switches size, as cameras do
    clip.write_bytes(
        _raw_h264(tmp_path / "a", 160, 128, 5) + _raw_h264(tmp_path / "b", 320, 240, 5)
    )
    args = ["predict", "--model", MODEL, "--video", str(clip), "--out", "o", "--tta", "flip"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    drawn, _ = decode(tmp_path / "o" / "grows_overlay.mp4")
    assert len(drawn) == len(rows(tmp_path / "o" / "grows_frames.csv")) == 10
    assert {frame.shape for frame in drawn} == {(128, 160, 3)}  # the stream's size
    run_id = result.stderr.split("prediction run ")[1].split(":")[0]
    assert mlflow.get_run(run_id).data.params["tta"] == "flip"  # --tta applies to a video


def test_a_video_with_no_frame_is_one_line_and_leaves_no_file(
    runner: CliRunner, model_env: dict, tmp_path: Path
) -> None:
    whole = write_video(tmp_path / "whole.mp4").read_bytes()
    clip = tmp_path / "header.mp4"
    clip.write_bytes(whole[: whole.index(b"mdat") + 4])  # the moov atom, no frame data
    result = runner.invoke(app, ["predict", "--model", MODEL, "--video", str(clip), "--out", "o"])
    assert "holds no frame to predict" in one_error_line(result)
    assert list((tmp_path / "o").iterdir()) == []


def test_frames_over_the_pixel_limit_are_refused_before_decoding(
    runner: CliRunner, model_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("polypseg.data.images.DEFAULT_MAX_MEGAPIXELS", 0.005)
    clip = write_video(tmp_path / "clip.mp4", frames=2)
    result = runner.invoke(app, ["predict", "--model", MODEL, "--video", str(clip), "--out", "o"])
    assert "96x80 is 0.00768 megapixels, over the 0.005-megapixel limit" in one_error_line(result)
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
