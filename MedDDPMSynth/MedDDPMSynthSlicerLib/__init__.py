"""Slicer side of MedDDPMSynth: scene logic over MRML (no Qt), the background engine process, export.

Importable with the ``slicer-core`` wheels alone (``vtkMRMLScene``, segmentation logic) as well as inside
the Slicer application. The widget (:mod:`.widget`), parameter node (:mod:`.parameters`) and dependency
installer (:mod:`.dependencies`) need the application and are imported only by ``MedDDPMSynth.py``.
"""

from .jobs import PRESETS, EngineFailure, GenerationJob, GenerationSettings
from .logic import SceneLogic, ras_to_lps
from .segments import LabelExport, SegmentMapping

__all__ = [
    "PRESETS",
    "EngineFailure",
    "GenerationJob",
    "GenerationSettings",
    "LabelExport",
    "SceneLogic",
    "SegmentMapping",
    "ras_to_lps",
]
