"""Packaging that pyproject.toml cannot say: the released models live in the repository's top-level
checkpoints/ and travel in the wheel as the package data rnnsent/released/ (where load_checkpoint("gru")
looks first; a clone or an editable install finds checkpoints/ beside the package instead).

Everything else (name, version, dependencies, entry points) is in pyproject.toml.
"""
from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["rnnsent*"]) + ["rnnsent.released"],
    package_dir={"rnnsent.released": "checkpoints"},
    # csrc: compiled on the user's machine by rnnsent.model.fused; released: the released models, loaded by name
    # serve/page.html: the demo page rnnsent serve answers at /
    package_data={"rnnsent.model": ["csrc/*.cpp"], "rnnsent.released": ["*.pt", "RESULTS.json"],
                  "rnnsent.serve": ["page.html"]},
)
