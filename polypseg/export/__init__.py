"""Models that leave the lab: the whole segmenter as one ONNX file, checked and logged.

`onnx.py` exports a logged or registered model (normalisation, frozen encoder, decoder,
upsampling, sigmoid) through `torch.onnx`'s dynamo exporter, checks the file with onnxruntime
against the torch model and logs it beside the pyfunc; `evaluation.predictors.OnnxPredictor`
runs such a file. Both need the `onnx` extra (`pip install -e '.[onnx]'`).
"""
