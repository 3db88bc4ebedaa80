"""Models that leave the lab: an ONNX file of the whole segmenter, and a predictor that runs it.

`onnx.py` exports a logged or registered model (normalisation, frozen encoder, decoder,
upsampling, sigmoid) through `torch.onnx`'s dynamo exporter, checks the file with onnxruntime
against the torch model and logs it beside the pyfunc; `runtime.py` runs such a file with the
same interface as the torch `Predictor`. Both need the `onnx` extra (`pip install -e '.[onnx]'`).
"""
