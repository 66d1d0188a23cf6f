import os

# Keras 3 picks its backend once, at first import; rnnsent's tests run it on PyTorch (no TensorFlow).
os.environ.setdefault("KERAS_BACKEND", "torch")
