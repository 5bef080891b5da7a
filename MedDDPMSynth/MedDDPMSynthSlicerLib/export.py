"""Export synthetic volumes + their segmentation as an nnU-Net (v2) training case with provenance.

Layout (``folder`` = an nnU-Net ``DatasetXXX_Name`` folder)::

    imagesTr/CASE_0000.nii.gz ...   one file per channel (modality), float32, the volumes' grid
    labelsTr/CASE.nii.gz            the official labels (whole-head 0/1/2, BraTS 0..4), uint8, same grid
    dataset.json                    channel names, labels, numTraining, file_ending (created or updated)
    provenance/CASE.json            where every file came from (model, seeds, engine provenance, geometry)

Written all-or-nothing with the engine's :class:`MedDDPMSynthLib.outputs.StagedOutput`; existing case
files are refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib import __version__
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.outputs import StagedOutput, check_destinations

from .scene_io import GEOMETRY_TOLERANCE, image_from_node, ijk_to_ras

FILE_ENDING = ".nii.gz"


def case_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return name or "case"


def _check_grids(volume_nodes, export) -> None:
    for node in volume_nodes:
        dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else None
        if dims != export.dimensions or not np.allclose(ijk_to_ras(node), export.ijk_to_ras, atol=GEOMETRY_TOLERANCE):
            raise InputError(f"volume '{node.GetName()}' is not on the grid of '{volume_nodes[0].GetName()}'; "
                             "export volumes of one generation together (or one volume at a time)")


def _dataset_json(folder: Path, channels: list[str], family, case: str) -> dict:
    path = folder / "dataset.json"
    labels = {"background": 0, **dict(zip(family.condition_names, family.condition_labels))}
    channel_names = {str(n): c for n, c in enumerate(channels)}
    cases = {p.name[: -len(FILE_ENDING)] for p in (folder / "labelsTr").glob(f"*{FILE_ENDING}")} | {case}
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except ValueError:
            raise InputError(f"{path} is not valid JSON; fix or delete it, or export into another folder") from None
        if existing.get("channel_names") != channel_names or existing.get("labels") != labels:
            raise InputError(f"{path} describes other channels or labels ({existing.get('channel_names')}); export "
                             "these volumes into another dataset folder")
        return {**existing, "numTraining": len(cases)}
    return {"channel_names": channel_names, "labels": labels, "numTraining": len(cases), "file_ending": FILE_ENDING,
            "description": "synthetic MRI made with MedDDPMSynth (Med-DDPM, Dorjsembe et al., IEEE JBHI 2024)"}


def _sha256(image: sitk.Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes()).hexdigest()


def write_pair(volume_nodes, export, folder: Path, case_id: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write one case; returns the written files (images, label, dataset.json, provenance)."""
    _check_grids(volume_nodes, export)
    family = export.mapping.family
    case = case_name(case_id or volume_nodes[0].GetName())
    channels = [node.GetAttribute("MedDDPMSynth.modality") or node.GetName() for node in volume_nodes]
    images = [folder / "imagesTr" / f"{case}_{n:04d}{FILE_ENDING}" for n in range(len(volume_nodes))]
    label = folder / "labelsTr" / f"{case}{FILE_ENDING}"
    provenance_path = folder / "provenance" / f"{case}.json"
    check_destinations([*images, label, provenance_path], overwrite)
    dataset = _dataset_json(folder, channels, family, case)
    written_images = [sitk.Cast(image_from_node(node), sitk.sitkFloat32) for node in volume_nodes]
    provenance = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "case": case,
        "exported_by": f"MedDDPMSynth {__version__} (3D Slicer module)",
        "family": family.name,
        "label_values": dataset["labels"],
        "segment_mapping": {t: ids for t, ids in export.mapping.segments.items()},
        "ijk_to_ras": export.ijk_to_ras.tolist(),
        "images": [
            {"file": str(path.relative_to(folder)), "volume": node.GetName(), "channel": channel,
             "model": node.GetAttribute("MedDDPMSynth.model"), "seed": node.GetAttribute("MedDDPMSynth.seed"),
             "voxels_sha256": _sha256(image),
             "engine_provenance": json.loads(node.GetAttribute("MedDDPMSynth.provenance") or "null")}
            for path, node, channel, image in zip(images, volume_nodes, channels, written_images)
        ],
        "label": {"file": str(label.relative_to(folder)), "voxels_sha256": _sha256(export.image)},
    }
    with StagedOutput(folder) as staged:
        for image, path in zip(written_images, images):
            staged.write_image(image, path)
        staged.write_image(sitk.Cast(export.image, sitk.sitkUInt8), label)
        staged.write_json(dataset, folder / "dataset.json")
        staged.write_json(provenance, provenance_path)
        return staged.commit()
