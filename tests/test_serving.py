"""The registered model in process and behind MLflow's scoring server (`mlflow models serve`):
one image or a batch of any sizes, as pixel lists or base64 PNG/JPEG, and short refusals.

The server is MLflow's own FastAPI app (`scoring_server.init`), called in process through its
ASGI interface: no subprocess, no port, no HTTP client library."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import mlflow
import numpy as np
import pytest
from mlflow.pyfunc import scoring_server
from PIL import Image

from polypseg.data.images import read_image
from polypseg.data.pairs import list_pairs

MODEL = "models:/polypseg-eval@champion"  # registered by conftest's `registered_model`


@pytest.fixture
def model(model_env: dict) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(MODEL)


@pytest.fixture
def app(model: mlflow.pyfunc.PyFuncModel, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    # `init` marks the whole process as a serving environment; undone after the test.
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")
    return scoring_server.init(model)


@pytest.fixture
def images(model_env: dict) -> list[np.ndarray]:
    """Two synthetic Kvasir-like images of different sizes."""
    found = [read_image(pair.image) for pair in list_pairs(model_env["root"])]
    first = found[0]
    second = next(image for image in found if image.shape != first.shape)
    return [first, second]


def _post(app, body: dict) -> tuple[int, dict]:  # noqa: ANN001 - an ASGI app
    """POST `body` as JSON to the app's /invocations; returns (status, decoded JSON)."""
    payload = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": payload, "more_body": False}]
    status, chunks = [], []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("test", 1),
        "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    text = b"".join(chunks)
    return status[0], {"raw": text.decode(), **json.loads(text)}


def _encoded(image: np.ndarray, fmt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_one_array_gives_one_mask_in_process(model, images) -> None:
    image = images[0]
    mask = model.predict(image)
    assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask)) <= {0, 1}


def test_a_list_of_images_of_different_sizes_gives_a_mask_each_in_process(model, images):
    masks = model.predict(images)
    assert [mask.shape for mask in masks] == [image.shape[:2] for image in images]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, model.predict(image))


def test_served_batch_of_two_sizes_answers_two_masks(app, model, images) -> None:
    records = [{"image": image.tolist()} for image in images]
    status, answer = _post(app, {"dataframe_records": records})
    assert status == 200, answer["raw"][:500]
    masks = [np.array(mask, dtype=np.uint8) for mask in answer["predictions"]]
    assert [mask.shape for mask in masks] == [image.shape[:2] for image in images]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, model.predict(image))


def test_served_one_image_as_pixel_lists_answers_its_mask(app, model, images) -> None:
    status, answer = _post(app, {"inputs": images[1].tolist()})
    assert status == 200, answer["raw"][:500]
    np.testing.assert_array_equal(np.array(answer["predictions"]), model.predict(images[1]))


def test_served_base64_png_gives_the_same_masks_as_pixels(app, model, images) -> None:
    status, answer = _post(app, {"inputs": [_encoded(image, "PNG") for image in images]})
    assert status == 200, answer["raw"][:500]
    for image, mask in zip(images, answer["predictions"], strict=True):
        np.testing.assert_array_equal(np.array(mask, dtype=np.uint8), model.predict(image))


def test_base64_jpeg_is_a_compact_request_of_any_size(app, images) -> None:
    pixels = json.dumps({"inputs": images[0].tolist()})
    compact = {"inputs": [_encoded(image, "JPEG") for image in images]}
    assert len(json.dumps(compact)) * 10 < len(pixels)  # both images, a tenth of one as lists
    status, answer = _post(app, compact)
    assert status == 200, answer["raw"][:500]
    got = [np.array(mask).shape for mask in answer["predictions"]]
    assert got == [image.shape[:2] for image in images]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"inputs": np.zeros((300, 200, 2), dtype=np.uint8).tolist()}, "got shape (300, 200, 2)"),
        ({"inputs": ["bm90IGFuIGltYWdl"]}, "image 1 of 1: not a readable PNG or JPEG"),
        ({"inputs": ["%%% not base64"]}, "image 1 of 1: a string must be base64"),
        (
            {"dataframe_records": [{"image": [[[0, 0, 0]]]}, {"image": [[[0, 0, 300]]]}]},
            "image 2 of 2: expected an HxWx3 array of 0-255 values",
        ),
        ({"dataframe_records": [{"image": [[1, 2], [3]]}]}, "image 1 of 1: expected"),
    ],
)
def test_bad_input_is_a_short_400_naming_the_fault(app, body, says) -> None:
    status, answer = _post(app, body)
    assert status == 400
    assert says in answer["message"]
    assert len(answer["raw"]) < 300, answer["raw"][:1000]


def test_bad_input_in_process_raises_one_line(model) -> None:
    with pytest.raises(ValueError, match=r"expected an HxWx3 array .* got shape \(4, 5\)"):
        model.predict(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="no images"):
        model.predict([])
