"""cdiff: contrastive-guided conditional diffusion for unsupervised anomaly detection in brain MRI.

The Python API (``from cdiff_cli import load_model``) is imported on first use, so that
``import cdiff_cli`` and ``cdiff --help`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place it is spelled: pyproject.toml reads it from here
__all__ = ["AnomalyMap", "Box", "Model", "Reconstruction", "SliceBoxes", "load_model"]

if TYPE_CHECKING:
    from cdiff_cli.api import AnomalyMap, Box, Model, Reconstruction, SliceBoxes, load_model


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cdiff_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'cdiff_cli' has no attribute {name!r}")
