import os

# Keras 3 picks its backend once, at first import; rnnsent's tests run it on PyTorch (no TensorFlow).
os.environ.setdefault("KERAS_BACKEND", "torch")

# rnnsent first, as its command line does: `import rnnsent` sets OpenMP's wait policy and MKL's reproducible
# mode, which only take effect before torch loads and before MKL's first call (a test module that imports
# Keras at collection would otherwise run MKL first, and results would differ in the last bits per thread count).
import rnnsent  # noqa: E402,F401
