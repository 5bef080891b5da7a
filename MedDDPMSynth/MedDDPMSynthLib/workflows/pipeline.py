"""Mask file in, synthetic MRI files out: the generate workflow shared by every front.

Order of work matters for "nothing lost": every check that can refuse (outputs, labels, geometry,
disk space) runs before sampling, and files are written through a staging folder.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedDDPMSynthLib import __version__
from MedDDPMSynthLib.model.api import SynthesisModel, check_grid_size
from MedDDPMSynthLib.model.checkpoint import file_sha256
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.geometry import GridMapping, plan_official, plan_physical
from MedDDPMSynthLib.domain.labels import LabelMapping, detached_tumour, to_official
from MedDDPMSynthLib.io.mask_io import check_mask_path, read_mask
from MedDDPMSynthLib.io.outputs import (
    StagedOutput,
    check_destinations,
    check_folder_name,
    check_name_lengths,
    check_disk_space,
    image_extension,
    split_image_name,
)
from MedDDPMSynthLib.io.preview import preview_png
from MedDDPMSynthLib.workflows.regenerate import check_margin, composite, load_previous, model_inputs, regeneration_region
from MedDDPMSynthLib.model.sampling import CancelCheck, ProgressCallback, SamplerSettings

GEOMETRIES = ("physical", "official")
INTENSITIES = ("raw", "unit")


@dataclass
class GenerateRequest:
    """What to generate. ``output``: an image file name (one sample) or a folder."""

    mask: Path
    output: Path
    samples: int = 1
    seed: int = 0
    batch: int = 1
    geometry: str = "physical"
    grid_xyz: tuple[int, int, int] | None = None
    intensity: str = "raw"
    labels: str | None = None
    overwrite: bool = False
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    #: how the sampler was chosen (preset, reason; see presets.SamplerChoice.record), for provenance
    sampler_choice: dict = field(default_factory=dict)
    #: local re-generation: the previous image to keep outside the edited region, its mask (default:
    #: found via the previous run's provenance.json), the margin around old + new tumour, RePaint rounds
    keep: Path | None = None
    previous_mask: Path | None = None
    margin_mm: float = 10.0
    harmonize: int = 3


@dataclass
class OutputPlan:
    images: list[list[Path]]  # [sample][modality]
    mask: Path | None = None
    provenance: Path | None = None
    preview: Path | None = None

    def all(self) -> list[Path]:
        extra = [p for p in (self.mask, self.provenance, self.preview) if p is not None]
        return [p for row in self.images for p in row] + extra


@dataclass
class GenerationResult:
    files: list[Path]
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def plan_outputs(request: GenerateRequest, modalities: tuple[str, ...]) -> OutputPlan:
    """The files a request writes; names the file system cannot hold and file-like folder names refused."""
    plan = _plan_outputs(request, modalities)
    if plan.provenance is not None:
        check_folder_name(Path(request.output))
    check_name_lengths(plan.all())
    return plan


def _plan_outputs(request: GenerateRequest, modalities: tuple[str, ...]) -> OutputPlan:
    out = Path(request.output)
    if image_extension(out):
        if request.samples != 1:
            raise InputError(f"-o {out} names one image file but --samples is {request.samples}; give a folder instead")
        stem, ext = split_image_name(out)
        if len(modalities) == 1:
            return OutputPlan([[out]])
        return OutputPlan([[out.with_name(f"{stem}_{m}{ext}") for m in modalities]])
    stem, ext = split_image_name(Path(request.mask))
    ext = {".nhdr": ".nrrd", ".mhd": ".mha", "": ".nii.gz"}.get(ext, ext)  # single-file formats only
    images = sample_files(out, stem, ext, request.samples, modalities)
    return OutputPlan(images, out / f"{stem}_mask{ext}", out / "provenance.json", out / "preview.png")


def sample_files(folder: Path, stem: str, ext: str, samples: int, modalities: tuple[str, ...]) -> list[list[Path]]:
    """The one naming rule of the images a folder output holds: ``STEM_sNN_MODALITY.EXT`` per sample and
    modality (the Slicer module reads the engine's results by it)."""
    return [[Path(folder) / f"{stem}_s{n:02d}_{m}{ext}" for m in modalities] for n in range(samples)]


def _check_request(request: GenerateRequest) -> None:
    if request.geometry not in GEOMETRIES:
        raise InputError(f"unknown --geometry '{request.geometry}'; use one of {', '.join(GEOMETRIES)}")
    if request.intensity not in INTENSITIES:
        raise InputError(f"unknown --intensity '{request.intensity}'; use one of {', '.join(INTENSITIES)}")
    if request.samples < 1 or request.batch < 1:
        raise InputError("--samples and --batch must be at least 1; use e.g. --samples 1 --batch 1")
    check_mask_path(request.mask)  # a symlink loop or a pipe is refused before anything resolves or reads it
    if Path(request.output).resolve() == Path(request.mask).resolve():
        raise InputError("the output would overwrite the input mask; choose another output")
    if request.keep is not None and request.geometry != "physical":
        raise InputError("local re-generation (--keep) works with --geometry physical only")
    if request.margin_mm < 0:
        raise InputError("--margin must be 0 mm or more")
    check_margin(request.margin_mm)


def _plan_geometry(request: GenerateRequest, model: SynthesisModel, official: sitk.Image) -> tuple[GridMapping, list[str]]:
    grid = tuple(request.grid_xyz or model.grid_xyz)
    bad = [g for g in grid if g <= 0 or g % model.spatial_divisor]
    if len(grid) != 3 or bad:
        raise InputError(f"--grid {grid} must be 3 positive multiples of {model.spatial_divisor} for this model")
    check_grid_size(grid, model.diffusion.config.model_channels)
    notes = [] if request.grid_xyz or not model.grid_is_default else [
        f"{model.info.path.name} does not say which grid it was trained on; using the {model.family.name} family's "
        f"official grid {'x'.join(map(str, grid))} at {model.spacing_mm[0]:g} mm (right for the official weights); "
        "for another model give --grid, or import it with 'medddpm-synth models import PATH --grid X,Y,Z --spacing A,B,C'"]
    if request.geometry == "official":
        return plan_official(official, grid), notes
    planning = _without_stray_tumour(official, model)  # a brush slip far from the head must not move the grid
    mapping = plan_physical(planning, grid, model.spacing_mm, model.family.direction)
    tumour = tumour_labels(model)
    outside = mapping.outside_voxels(planning, tumour)
    if outside:
        fov = [round(g * s) for g, s in zip(grid, model.spacing_mm)]
        raise InputError(
            f"{outside} tumour voxels lie outside the model's {fov[0]}x{fov[1]}x{fov[2]} mm field of view around the "
            "head; move the tumour nearer the head's centre or crop the mask to the head"
        )
    warnings = list(notes)
    lost = mapping.outside_voxels(official, tumour) - outside
    if lost:
        warnings.append(f"{lost} stray tumour voxel(s) lie outside the model's field of view and are not generated")
    if mapping.cropped_fraction > 0:
        warnings.append(
            f"{100 * mapping.cropped_fraction:.1f}% of the head lies outside the model's field of view and is cut off"
        )
    return mapping, warnings


def _without_stray_tumour(official: sitk.Image, model: SynthesisModel) -> sitk.Image:
    """``official`` with the detached tumour fragments (accepted with a warning) set to background."""
    stray = detached_tumour(official, model.family)
    if not stray.any():
        return official
    array = sitk.GetArrayFromImage(official)
    array[stray] = 0
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(official)
    return image


def tumour_labels(model: SynthesisModel) -> list[int]:
    return list(model.family.tumour_labels)


def prepare_labels(request: GenerateRequest, model: SynthesisModel) -> tuple[sitk.Image, np.ndarray, GridMapping, list[str]]:
    """Read and check the mask; return it in official labels, its model-grid array, the mapping and the
    warnings (anatomy findings that are not refused, then geometry)."""
    anatomy: list[str] = []
    official = read_official(request, model, anatomy)
    labels, mapping, warnings = labels_on_model_grid(request, model, official)
    return official, labels, mapping, anatomy + warnings


def read_official(request: GenerateRequest, model: SynthesisModel, warnings: list[str] | None = None) -> sitk.Image:
    """The mask file of ``request`` in the family's official labels (checked). Anatomy findings that
    are not refused (see :func:`labels.to_official`) go to ``warnings`` when a list is given."""
    mask = read_mask(request.mask)
    mapping_labels = LabelMapping.parse(request.labels, model.family) if request.labels else None
    return to_official(mask, model.family, mapping_labels, warnings, official=request.geometry == "official")


def labels_on_model_grid(
    request: GenerateRequest, model: SynthesisModel, official: sitk.Image
) -> tuple[np.ndarray, GridMapping, list[str]]:
    """An official label map (e.g. an edited one) on the model grid: (labels, mapping, warnings)."""
    mapping, warnings = _plan_geometry(request, model, official)
    labels = mapping.labels_to_model(official)
    tumour = tumour_labels(model)
    if np.isin(sitk.GetArrayViewFromImage(official), tumour).any() and not np.isin(labels, tumour).any():
        vanished = (f"the tumour is smaller than one model voxel ({model.spacing_mm[0]} mm) and vanished on the "
                    "model grid; paint a larger tumour")
        if request.geometry != "official":
            raise InputError(vanished)
        warnings = [*warnings, f"{vanished} (generated anyway: the official script's resize does not check it)"]
    return labels, mapping, warnings


def generate_files(
    request: GenerateRequest,
    model: SynthesisModel,
    model_name: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> GenerationResult:
    """Generate ``request.samples`` images for a mask file and write them (all or nothing)."""
    _check_request(request)
    plan = plan_outputs(request, model.family.modalities)
    check_destinations(plan.all(), request.overwrite, inputs=[request.mask, request.keep, request.previous_mask])
    if request.keep is not None and any(p.resolve() == Path(request.keep).resolve() for p in plan.all()):
        raise InputError("the output would overwrite the previous image given with --keep; choose another output")
    official, labels, mapping, warnings = prepare_labels(request, model)
    previous = region = keep_image = region_model = None
    if request.keep is not None:
        previous = load_previous(Path(request.keep), request.previous_mask, model.family, request.intensity)
        region = regeneration_region(previous.old_official, official, model.family, request.margin_mm)
        keep_image, region_model = model_inputs(previous, region, mapping)
    voxels = int(np.prod(official.GetSize()))
    check_disk_space(Path(request.output).parent, 4 * voxels * (len(plan.all()) + 1))

    background = -1.0 if request.intensity == "raw" else 0.0  # the model's background intensity
    anchor = Path(request.output) if plan.provenance else Path(request.output).parent
    seconds, first = 0.0, None
    with StagedOutput(anchor) as staged:
        # block by block (--batch samples each), written as they come: memory holds one block, not --samples
        for start, images, block_seconds in _sample_blocks(
                model, labels, request, progress, cancel, keep_image=keep_image, regenerate=region_model):
            seconds += block_seconds
            if request.intensity == "unit":
                images = (images + 1.0) / 2.0
            first = images[0, 0] if first is None else first
            for n, row in enumerate(plan.images[start: start + len(images)]):
                for c, path in enumerate(row):
                    image = mapping.image_to_input(images[n, c], background)
                    if previous is not None:  # outside the region: the previous file's exact voxels
                        image = composite(image, previous.images[c], region)
                    staged.write_image(image, path)
        provenance = _provenance(request, model, model_name, mapping, official, seconds, warnings, plan)
        if plan.mask is not None:
            _write_mask(staged, request, model, mapping, labels, official, plan.mask)
        if plan.provenance is not None:
            staged.write_json(provenance, plan.provenance)
        if plan.preview is not None:
            staged.write_image(preview_png(first, labels, tumour_labels(model)), plan.preview)
        files = staged.commit()
    return GenerationResult(files, provenance, warnings)


def _sample_blocks(model, labels, request, progress, cancel, **inpainting):
    """(first sample number, images (n, C, X, Y, Z), seconds) per block of at most ``request.batch``
    samples. Block k uses seeds SEED + k*batch + i, so the samples equal one call for all of them;
    progress counts over all blocks."""
    for start in range(0, request.samples, request.batch):
        n = min(request.batch, request.samples - start)
        report = None if progress is None else (
            lambda done, total, o=start, k=n: progress(o * (total // k) + done, request.samples * (total // k)))
        started = time.perf_counter()
        images = model.generate(labels, request.seed + start, n, n, report, cancel, request.sampler,
                                harmonize=request.harmonize, **inpainting)
        yield start, images, time.perf_counter() - started


def _write_mask(staged, request, model, mapping, labels, official, destination) -> None:
    """Physical: the input mask itself (it is the images' grid). Official: the resized labels as the
    official script exports them (BraTS 4->0, 2->1, 1->2), with the mask's geometry."""
    if request.geometry == "physical":
        staged.copy_file(Path(request.mask), destination)
        return
    exported = model.family.official_export_labels(labels).astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(exported.transpose(2, 1, 0)))
    reference = mapping.image_to_input(np.zeros(labels.shape, np.float32), 0.0)
    image.CopyInformation(reference)
    staged.write_image(image, destination)


def _versions() -> dict:
    import nibabel

    return {
        "medddpm_synth": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "SimpleITK": sitk.Version.VersionString(),
        "nibabel": nibabel.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _provenance(request, model, model_name, mapping, official, seconds, warnings, plan) -> dict:
    config = model.diffusion.config
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mask": {"path": str(Path(request.mask).resolve()), "sha256": file_sha256(request.mask)},
        "model": {
            "name": model_name,
            "path": str(model.info.path.resolve()),
            "sha256": file_sha256(model.info.path),
            "family": model.family.name,
            "container": model.info.container,
            "step": model.info.step,
            "timesteps": model.timesteps,
            "config": asdict(config),
            "grid_xyz": list(mapping.model_grid.size_xyz),
            "spacing_mm": list(mapping.model_grid.spacing_mm),
        },
        "sampler": {**asdict(request.sampler), "steps": request.sampler.evaluations(model.timesteps),
                    **request.sampler_choice},
        "seeds": [request.seed + n for n in range(request.samples)],
        "local_regeneration": None if request.keep is None else {
            "previous_image": str(Path(request.keep).resolve()),
            "margin_mm": request.margin_mm,
            "harmonize": request.harmonize,
        },
        "batch": request.batch,
        "device": str(model.device),
        "intensity": request.intensity,
        "labels": request.labels or "default",
        "modalities": list(model.family.modalities),
        "geometry": mapping.to_dict(),
        "outputs": [str(p.name) for p in plan.all() if p != plan.provenance],
        "seconds_sampling": round(seconds, 3),
        "warnings": warnings,
        "versions": _versions(),
    }
