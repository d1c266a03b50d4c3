"""The Python API: ``load_model`` and the typed results of :class:`Model` (see ``api/model.py``).

Importing it loads numpy but not torch; ``load_model`` imports torch when it runs.
"""

from cdiff_cli.api.model import AnomalyMap, GridMaps, Input, Model, Reconstruction, SliceBoxes, load_model
from cdiff_cli.infer.postprocess import Box

__all__ = ["AnomalyMap", "Box", "GridMaps", "Input", "Model", "Reconstruction", "SliceBoxes", "load_model"]
