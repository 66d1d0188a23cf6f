import os

# Keras 3 picks its backend once, at first import; rnnsent's tests run it on PyTorch (no TensorFlow).
os.environ.setdefault("KERAS_BACKEND", "torch")

# rnnsent first, as its command line does: `import rnnsent` sets OpenMP's wait policy, which only takes effect
# before torch loads. MKL's strict reproducible mode, which a Trainer on the fused kernel asks for
# (rnnsent.runtime.setup), must come before MKL's first call: in one pytest process that is a test module's
# import (Keras at collection), so it is set here for the whole session, as the command line has it.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import rnnsent  # noqa: E402,F401
