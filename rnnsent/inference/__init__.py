"""Using a trained model: loading it (loading.py), evaluating and predicting (evaluate.py), word attributions
(explain.py), ONNX export (export.py), Keras interop (keras_io.py) and releasing models (releasing.py)."""
