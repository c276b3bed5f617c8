"""Unmixing Before Fusion: multi-source hyperspectral image synthesis (CVPR 2024), as one package.

`__version__` is the version of a checkout; an installed copy reports its package metadata
(`ubf.core.version.package_version`), which pyproject.toml takes from this line.
"""
__version__ = "0.1.0"
