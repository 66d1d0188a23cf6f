"""rnnsent's HTTP server: `rnnsent serve`, or create_app(loaded) for your own ASGI server (needs the serve extra:
pip install 'rnnsent[serve]'). See docs/serve.md."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["create_app", "ServeSettings"]
_EXPORTS = {"create_app": "rnnsent.serve.app", "ServeSettings": "rnnsent.serve.settings"}

if TYPE_CHECKING:
    from rnnsent.serve.app import create_app
    from rnnsent.serve.settings import ServeSettings


def __getattr__(name: str):  # FastAPI is imported with create_app only: the settings (and --help) need none
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnnsent.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
