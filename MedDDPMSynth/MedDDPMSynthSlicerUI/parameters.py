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

from MedDDPMSynthLib.devices import DEVICES  # torch-free: the panel exists before the dependencies do
from MedDDPMSynthSlicerLib.jobs import PRESETS


@parameterNodeWrapper
class MedDDPMSynthParameterNode:
    segmentation: vtkMRMLSegmentationNode
    referenceVolume: vtkMRMLScalarVolumeNode
    model: str = "demo"
    samples: Annotated[int, WithinRange(1, 16)] = 1
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    # Preview: the engine's CPU default; reading the device needs torch, which the module installs on first
    # use, so the widget switches a GPU machine to Exact then (Widget.applyDeviceDefault)
    preset: Annotated[str, Choice([*PRESETS, "Custom"])] = "Preview"
    sampler: Annotated[str, Choice(["ddpm", "ddim", "dpm++", "dpm++3m"])] = "dpm++"
    steps: Annotated[int, WithinRange(1, 1000)] = 25
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    shiftStepMm: Annotated[float, WithinRange(0.5, 50.0)] = 5.0
    scaleFactor: Annotated[float, WithinRange(0.25, 4.0)] = 1.2
    rotateDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 15.0
    marginMm: Annotated[float, WithinRange(0.0, 50.0)] = 10.0
    harmonize: Annotated[int, WithinRange(1, 10)] = 3
    exportFolder: Path
    caseId: str = ""
