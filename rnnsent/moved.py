"""Names that moved or were renamed, still found at their old place: one module `__getattr__` for all of them.

    __getattr__ = moved.names(__name__, {"load_checkpoint": "rnnsent.loading"},
                              renamed={"ImdbData": "rnnsent.data.text:PreparedData"})

A moved name is looked up in its new module on first use, without a word (the old import path stays valid).
A renamed one warns (DeprecationWarning, naming the new name) and gives the same object. The new modules are
imported by name, on use, because they often import the old module themselves.
"""
from __future__ import annotations

import importlib
import warnings


def names(module: str, moved: dict[str, str], renamed: dict[str, str] | None = None):
    """A module-level __getattr__ for `module`: `moved` maps a name to the module that holds it now, `renamed`
    an old name to "module:new_name"."""
    renamed = renamed or {}

    def __getattr__(name: str):
        if name in moved:
            return getattr(importlib.import_module(moved[name]), name)
        if name in renamed:
            home, new = renamed[name].split(":")
            warnings.warn(f"{module}.{name} is now {home}.{new}; the old name will go away", DeprecationWarning,
                          stacklevel=2)
            return getattr(importlib.import_module(home), new)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
