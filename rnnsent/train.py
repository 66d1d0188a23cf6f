"""The trainer's old module name, kept so that code written for it keeps working: it is rnnsent.trainer now.

`rnnsent.train` is the train function, but Python binds a package's attribute to a submodule of the same name
once that submodule is imported, so `import rnnsent.train` used to turn `rnnsent.train(config)` into "module
object is not callable". This module is callable as the function, so `rnnsent.train(config)` works in either
order, and its old names (Trainer, TrainConfig, RECIPES, ...) are still found here.
"""
import importlib
import sys
import types
import warnings

from rnnsent import trainer as _trainer

warnings.warn("the module rnnsent.train is now rnnsent.trainer (rnnsent.train stays the train function); "
              "import Trainer and the rest from rnnsent.trainer, settings from rnnsent.config", DeprecationWarning,
              stacklevel=2)

# Where the names this module once re-exported live (the trainer's own are rnnsent.trainer's).
_HOMES = ("rnnsent.trainer", "rnnsent.config", "rnnsent.resume", "rnnsent.runtime", "rnnsent.stopping",
          "rnnsent.report")


def __getattr__(name: str):
    for home in _HOMES:
        module = importlib.import_module(home)
        if not name.startswith("__") and hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _trainer.train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
