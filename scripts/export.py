#!/usr/bin/env python3
"""Thin shell over rnnsent.cli.export_main; run with --help for the flags."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

from rnnsent.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
