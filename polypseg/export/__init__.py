"""Models that leave the lab: the whole segmenter as one ONNX file (`onnx.py`), run by
`evaluation.predictors.OnnxPredictor`; both need the `onnx` extra (`pip install -e '.[onnx]'`)."""
