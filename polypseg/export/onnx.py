"""`polypseg export --format onnx`: the whole segmenter as one ONNX graph, checked and logged.

The graph (`ExportGraph`) is what the pyfunc runs after its resize: uint8 images B×3×S×S at the
training size S (batch dynamic) → normalisation → frozen encoder → decoder → probabilities at S
and the decoder's logits, in float32. The exporter is `torch.onnx.export(dynamo=True)`: the
TorchScript one has no ONNX translation for SAM's antialiased resize, which the dynamo one maps to
`Resize(antialias=1)` of opset 18. The file is checked against torch on real images at two batch
sizes before it replaces `--out`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polypseg.atomic import atomic_path
from polypseg.data.images import read_image
from polypseg.errors import PolypsegError
from polypseg.evaluation.predict import collect_images
from polypseg.evaluation.predictors import (
    INPUT,
    LOGITS,
    META_PREFIX,
    PROBABILITIES,
    Predictor,
    batch_input,
    open_session,
    registered_version,
    require,
)
from polypseg.models.decoder import Decoder
from polypseg.models.frozen import FrozenEncoder
from polypseg.models.segmenter import upsample_logits
from polypseg.outputs import check_output_file, check_outputs

# Largest probability difference allowed between onnxruntime and torch, both float32.
PARITY_TOLERANCE = 1e-3
CHECK_IMAGES = 8  # real images the parity check runs, taken from the model's data set
ARTIFACT_DIR = "onnx"  # where the file goes in the model's run, beside `model/`


class ExportGraph(nn.Module):
    """uint8 images B×3×S×S → (probabilities B×1×S×S, decoder logits B×1×h×w), float32."""

    def __init__(self, encoder: FrozenEncoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The backbone itself, not `FrozenEncoder.forward`: that one runs under inference mode
        # at the device's compute dtype (bf16 on CUDA); the file is the fp32 master's graph.
        features = self.encoder.backbone(self.encoder.preprocess(images))
        logits = self.decoder(features, images)  # the hires decoder reads the pixels too
        size = (images.shape[-2], images.shape[-1])
        return torch.sigmoid(upsample_logits(logits, size)), logits


@dataclass
class Export:
    """What `export_onnx` wrote, how close it is to the torch model, and where it was logged."""

    path: Path
    max_difference: float
    n_images: int
    batch_sizes: tuple[int, ...]
    run_id: str | None
    artifact_uri: str | None


def to_onnx(graph: ExportGraph, example: torch.Tensor, metadata: dict[str, str]):  # noqa: ANN202
    """The graph through the dynamo exporter, batch dynamic; `metadata` goes into the file."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[PROBABILITIES, LOGITS],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,  # the exporter's per-pass report; the result is checked below
        )
    program.model.metadata_props.update({META_PREFIX + k: v for k, v in metadata.items()})
    return program


def parity(path: Path, graph: ExportGraph, batch: np.ndarray) -> float:
    """Largest |p_onnx − p_torch| over the probabilities and sigmoid(logits), the whole batch
    (two images or more) at once and each image alone: the dynamic batch at two sizes."""
    from scipy.special import expit

    session = open_session(path)
    with torch.no_grad():
        want = [t.numpy() for t in graph(torch.from_numpy(batch))]
    runs = [(batch, slice(None))] + [(batch[i : i + 1], slice(i, i + 1)) for i in range(len(batch))]
    worst = 0.0
    for chunk, rows in runs:
        probabilities, logits = session.run([PROBABILITIES, LOGITS], {INPUT: chunk})
        worst = max(
            worst,
            float(np.abs(probabilities - want[0][rows]).max()),
            float(np.abs(expit(logits) - expit(want[1][rows])).max()),
        )
    return worst


def check_images(images: Sequence[str] | None, data_roots: Sequence[str]) -> list[Path]:
    """The images the parity check may run: those given, else the model's own data set's (all
    of them, so the output check can refuse landing on any)."""
    if images:
        return collect_images(images)
    for root in data_roots:
        if (Path(root) / "images").is_dir():
            return collect_images([str(Path(root) / "images")])
    where = f"its data ({', '.join(data_roots)}) is not here" if data_roots else "it names no data"
    raise PolypsegError(
        f"no images to check the export on: {where}; pass --check-images DIR (a few images)"
    )


def training_roots(model_uri: str, run_id: str | None) -> list[str]:
    """The folders its training run logged (`DIR`, or `NAME=DIR, ...`); a study's champion's
    version names the trial's run (the parent run that logged it trained nothing)."""
    import mlflow

    client = mlflow.MlflowClient()
    if found := registered_version(model_uri, strict=False):
        tags = client.get_model_version(found[0], found[1]).tags
        run_id = tags.get("polypseg.trial_run_id", run_id)
    if not run_id:
        return []
    run = client.get_run(run_id)
    sources = [json.loads(d.dataset.source).get("uri", "") for d in run.inputs.dataset_inputs]
    roots = [
        part.partition("=")[2] if "=" in part.split("/")[0] else part
        for source in sources
        for part in source.split(", ")
    ]
    return [root for root in (*roots, run.data.params.get("data.root")) if root]


def export_onnx(
    model_uri: str,
    out: str | Path,
    images: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
) -> Export:
    """Export `model_uri` to `out`, check it against torch on `images` (else the model's own
    data), and log it to the model's run."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)
    import mlflow

    from polypseg.tracking.store import check_tracking_uri, default_tracking_uri

    out = check_output_file(out)
    uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    predictor = Predictor(model_uri)
    described = predictor.describe()
    run_id = described["model_run_id"]
    segmenter = predictor.segmenter.cpu().eval()
    paths = check_images(images, [] if images else training_roots(model_uri, run_id))
    check_outputs([(out, "the ONNX model")], out, "choose another --out", inputs=paths)
    paths = paths[:CHECK_IMAGES]
    batch = batch_input([read_image(p) for p in paths], segmenter.image_size)
    if len(batch) == 1:  # a batch of one would fix the batch dimension at export, and check none
        batch = np.concatenate([batch, batch])
    graph = ExportGraph(segmenter.encoder, segmenter.decoder).eval()
    metadata = {
        **{k: str(v) for k, v in described.items() if v is not None},
        "encoder": segmenter.encoder.name,
        "image_size": str(segmenter.image_size),
        "threshold": str(predictor.threshold),
    }
    program = to_onnx(graph, torch.from_numpy(batch[:2]), metadata)
    with atomic_path(out, option="--out") as tmp:
        program.save(tmp, external_data=False)
        worst = parity(tmp, graph, batch)
        if worst > PARITY_TOLERANCE:
            raise PolypsegError(
                f"the ONNX export of {model_uri} differs from the torch model by {worst:.2e} in "
                f"probability (allowed {PARITY_TOLERANCE:g}); {out} was not written"
            )
    artifact = None
    if log and run_id:
        mlflow.MlflowClient().log_artifact(run_id, str(out), ARTIFACT_DIR)
        artifact = f"runs:/{run_id}/{ARTIFACT_DIR}/{out.name}"
    return Export(out, worst, len(paths), (len(batch), 1), run_id, artifact)
