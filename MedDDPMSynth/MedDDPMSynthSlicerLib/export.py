"""Export synthetic volumes + their segmentation as an nnU-Net (v2) training case with provenance.

Layout (``folder`` = an nnU-Net ``DatasetXXX_Name`` folder)::

    imagesTr/CASE_0000.nii.gz ...   one file per channel (modality), float32, the volumes' grid
    labelsTr/CASE.nii.gz            the official labels (whole-head 0/1/2, BraTS 0..4), uint8, same grid
    dataset.json                    channel names, labels, numTraining, file_ending (created or updated)
    provenance/CASE.json            where every file came from (model, seeds, engine provenance, geometry)

Each sample of a generation is one case, its volumes the family's channels in order (BraTS: T1, T1ce,
T2, FLAIR); the label is refused when the segmentation was edited after the images were generated (the
volumes carry the sha256 of the label voxels they were made from). Written all-or-nothing with the
engine's :class:`MedDDPMSynthLib.io.outputs.StagedOutput`; existing case files are refused unless ``overwrite``.
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
from MedDDPMSynthLib.data.dataset_layout import Layout, case_ids, updated_dataset_json
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.io.outputs import StagedOutput, check_destinations

from . import attributes
from .scene_io import image_from_node, ijk_to_ras, same_matrix_grid

DESCRIPTION = "synthetic MRI made with MedDDPMSynth (Med-DDPM, Dorjsembe et al., IEEE JBHI 2024)"


def case_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return name or "case"


def _check_grids(volume_nodes, export) -> None:
    for node in volume_nodes:
        dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else None
        if not same_matrix_grid(ijk_to_ras(node), dims, export.ijk_to_ras, export.dimensions):
            raise InputError(f"volume '{node.GetName()}' is not on the grid of '{volume_nodes[0].GetName()}'; "
                             "export volumes of one generation together (or one volume at a time)")


def _sha256(image: sitk.Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes()).hexdigest()


def label_sha256(image: sitk.Image) -> str:
    """sha256 of a label image's voxels as uint8 (the form exported): recorded on generated volumes."""
    return _sha256(sitk.Cast(image, sitk.sitkUInt8))


def group_cases(volume_nodes, family) -> list[list]:
    """The volumes as cases: one per (generation, sample), each with the family's channels in order.
    Refuses duplicated, missing or foreign channels with one message."""
    groups: dict[tuple, dict] = {}
    for node in volume_nodes:
        key = (node.GetAttribute(attributes.GENERATION) or node.GetID(), node.GetAttribute(attributes.SEED))
        channel = node.GetAttribute(attributes.MODALITY) or (family.modalities[0] if len(family.modalities) == 1
                                                                   else node.GetName())
        group = groups.setdefault(key, {})
        if channel in group:
            raise InputError(f"'{node.GetName()}' and '{group[channel].GetName()}' are both the {channel} channel of one "
                             "case; check one volume per channel (one sample of one generation per case)")
        group[channel] = node
    cases = []
    for group in groups.values():
        if set(group) != set(family.modalities):
            names = ", ".join(n.GetName() for n in group.values())
            raise InputError(f"a {family.name} case needs exactly the channels {', '.join(family.modalities)}; "
                             f"the checked volume(s) {names} give {', '.join(group)}")
        cases.append([group[m] for m in family.modalities])
    return cases


def _check_label_unchanged(volume_nodes, export) -> None:
    label = label_sha256(export.image)
    for node in volume_nodes:
        made_from = node.GetAttribute(attributes.MASK_SHA256)
        if made_from and made_from != label:
            raise InputError(f"the segmentation was edited after '{node.GetName()}' was generated, so the image and "
                             "the label would not match; click Regenerate locally (or Undo the edit) before exporting")


def write_pair(volume_nodes, export, folder: Path, case_id: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write one case (the volumes are its channels, in order); returns the written files."""
    return write_cases([list(volume_nodes)], export, folder, case_id, overwrite)


def write_cases(cases: list[list], export, folder: Path, case_id: str | None = None,
                overwrite: bool = False) -> list[Path]:
    """Write the cases (one label for all: they come from one segmentation) in one all-or-nothing step;
    with several cases, ``case_id`` gets ``_000``, ``_001``... Returns the written files."""
    every = [node for case in cases for node in case]
    _check_grids(every, export)
    _check_label_unchanged(every, export)
    base = case_name(case_id or cases[0][0].GetName())
    names = [base] if len(cases) == 1 else [f"{base}_{n:03d}" for n in range(len(cases))]
    with StagedOutput(folder) as staged:
        for n, (name, volume_nodes) in enumerate(zip(names, cases)):
            _stage_case(staged, volume_nodes, export, folder, name, set(names[:n + 1]), overwrite)
        written = staged.commit()
    return list(dict.fromkeys(written))  # dataset.json is staged once per case; the last one counts them all


def _stage_case(staged, volume_nodes, export, folder: Path, case: str, new_cases: set, overwrite: bool) -> None:
    family = export.mapping.family
    layout = Layout(folder, "nnunet", family)  # the engine's nnU-Net layout: names and dataset.json
    channels = [node.GetAttribute(attributes.MODALITY) or node.GetName() for node in volume_nodes]
    images = layout.images(case)
    if len(images) != len(volume_nodes):
        raise InputError(f"a {family.name} case has {len(images)} channel(s) ({', '.join(family.modalities)}); "
                         f"{len(volume_nodes)} volume(s) were given")
    label, provenance_path = layout.label(case), layout.provenance(case)
    check_destinations([*images, label, provenance_path], overwrite)
    dataset = updated_dataset_json(layout, len(case_ids(layout) | new_cases), DESCRIPTION)
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
             "model": node.GetAttribute(attributes.MODEL), "seed": node.GetAttribute(attributes.SEED),
             "voxels_sha256": _sha256(image),
             "engine_provenance": json.loads(node.GetAttribute(attributes.PROVENANCE) or "null")}
            for path, node, channel, image in zip(images, volume_nodes, channels, written_images)
        ],
        "label": {"file": str(label.relative_to(folder)), "voxels_sha256": _sha256(export.image)},
    }
    for image, path in zip(written_images, images):
        staged.write_image(image, path)
    staged.write_image(sitk.Cast(export.image, sitk.sitkUInt8), label)
    staged.write_json(dataset, layout.dataset_json)
    staged.write_json(provenance, provenance_path)
