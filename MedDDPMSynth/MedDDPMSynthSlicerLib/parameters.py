"""The module's parameter node (Slicer application only: ``slicer.parameterNodeWrapper``).

Widgets named in the .ui with a ``SlicerParameterName`` property are bound to these fields by
``connectGui``; the segment-mapping and model selectors are filled by the widget from the scene and the
model catalogue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from MedDDPMSynthLib.sampling import SAMPLERS

from .jobs import PRESETS, default_preset_label


@parameterNodeWrapper
class MedDDPMSynthParameterNode:
    segmentation: vtkMRMLSegmentationNode
    referenceVolume: vtkMRMLScalarVolumeNode
    model: str = "demo"
    samples: Annotated[int, WithinRange(1, 16)] = 1
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    # the engine's per-device default: Preview on a CPU, Exact on a GPU
    preset: Annotated[str, Choice([*PRESETS, "Custom"])] = default_preset_label()
    sampler: Annotated[str, Choice(list(SAMPLERS))] = "dpm++"
    steps: Annotated[int, WithinRange(1, 1000)] = 25
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    shiftStepMm: Annotated[float, WithinRange(0.5, 50.0)] = 5.0
    scaleFactor: Annotated[float, WithinRange(0.25, 4.0)] = 1.2
    rotateDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 15.0
    marginMm: Annotated[float, WithinRange(0.0, 50.0)] = 10.0
    harmonize: Annotated[int, WithinRange(1, 10)] = 3
    exportFolder: Path
    caseId: str = ""
