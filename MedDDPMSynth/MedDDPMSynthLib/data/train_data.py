"""Training pairs (label mask, image) on the model grid, normalised as the released weights were trained.

Folders: ``masks_dir`` holds one label map per case; ``images_dir`` the matching images. Matching rule:
the mask's file name without its extension (``case7`` for ``case7.nii.gz``) is the *stem*; a trailing
``_seg``, ``_mask`` or ``_label`` is also tried when the full stem has no image.

* whole-head: one image ``<stem>.<ext>`` per mask (any supported extension);
* BraTS: four images ``<stem>_t1``, ``<stem>_t1ce``, ``<stem>_t2``, ``<stem>_flair`` (that channel order).

Every case goes through the same geometry code as inference: labels to the official convention
(:func:`labels.to_official`), a model grid placed with :func:`geometry.plan_physical` around the head
(the family's canonical direction), labels by nearest neighbour, images by linear interpolation onto that
same grid. Intensities: the model's ``normalisation`` option (normalisation.py): ``official`` as the
released weights were trained (whole-head per slice along Z, BraTS per volume and modality, min-max to
[-1, 1]), or ``robust-volume`` (percentiles of the whole volume inside the labelled anatomy).

Also here: the order in which cases are drawn (:class:`EpochOrder`, resumable mid-epoch) and each
process's place in data-parallel training (:func:`distributed.setup_distributed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family
from MedDDPMSynthLib.domain.geometry import plan_physical
from MedDDPMSynthLib.io.mask_io import MASK_SUFFIXES, list_images, read_image, read_mask  # noqa: F401 (read_image: this module's reader)
from MedDDPMSynthLib.domain.normalisation import fit_intensity, healthy_landmarks
from MedDDPMSynthLib.model.model_options import Landmarks
from MedDDPMSynthLib.domain.labels import LabelMapping, to_official
from MedDDPMSynthLib.io.outputs import image_extension, split_image_name

MASK_STEM_SUFFIXES = ("_seg", "_mask", "_label")
#: tolerated fraction of labelled voxels outside the image before the pair is refused
MAX_UNCOVERED = 0.01
#: how many training images (evenly spread) give a model's healthy-tissue landmarks: their median settles well before
HEALTHY_LANDMARK_CASES = 64

#: augment(image, labels) -> (image, labels): SimpleITK images before resampling. ``image`` has one
#: component per modality (scalar for whole-head, a vector image t1,t1ce,t2,flair for BraTS); ``labels``
#: are in the official convention. It may change geometry (flip, rotate, scale) as long as both move together.
Augment = Callable[[sitk.Image, sitk.Image], "tuple[sitk.Image, sitk.Image]"]


# ------------------------------------------------------------------------------------------- files


def _candidates(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{stem}.*") if image_extension(p) and split_image_name(p)[0] == stem)


def _find_image(images_dir: Path, stem: str) -> Path | None:
    found = _candidates(images_dir, stem)
    if len(found) > 1:
        raise InputError(f"{images_dir} has several images for '{stem}' ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _stems(mask: Path) -> list[str]:
    stem = split_image_name(mask)[0]
    trimmed = [stem[: -len(s)] for s in MASK_STEM_SUFFIXES if stem.endswith(s) and len(stem) > len(s)]
    return [stem, *trimmed]


def find_pairs(masks_dir, images_dir, family: Family) -> list[tuple[Path, list[Path]]]:
    """(mask, [image per modality]) for every mask in ``masks_dir``, or an InputError naming what is missing."""
    masks_dir, images_dir = Path(masks_dir), Path(images_dir)
    for folder, what in ((masks_dir, "masks"), (images_dir, "images")):
        if not folder.is_dir():
            raise InputError(f"the {what} folder {folder} does not exist or is not a folder; check the path")
    masks = list_images(masks_dir)
    if not masks:
        raise InputError(f"no mask files ({MASK_SUFFIXES}) in {masks_dir}; put one label map per case there")
    suffixes = [""] if family.image_channels == 1 else [f"_{m}" for m in family.modalities]
    pairs = []
    for mask in masks:
        for stem in _stems(mask):
            images = [_find_image(images_dir, stem + s) for s in suffixes]
            if all(images):
                break
        else:
            wanted = " + ".join(f"{_stems(mask)[0]}{s}.<ext>" for s in suffixes)
            raise InputError(f"no image for mask {mask.name}: expected {wanted} in {images_dir}; add it or remove the mask")
        pairs.append((mask, images))
    return pairs


def _uncovered_fraction(labels: sitk.Image, image: sitk.Image) -> float:
    """Fraction of labelled voxels whose centre lies outside the image (wrong header / other patient)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    covered = sitk.GetArrayFromImage(sitk.Resample(  # a copy: a view would outlive its image
        ones, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    selected = sitk.GetArrayViewFromImage(labels) != 0
    return float(np.count_nonzero(selected & (covered == 0)) / max(1, np.count_nonzero(selected)))


# ----------------------------------------------------------------------------------------- dataset


class PairedVolumeDataset(Dataset):
    """(image (C_img, D, H, W), condition (C_cond, D, H, W)) float32 pairs in model layout (D=Z, H=Y, W=X).

    ``cache``: keep preprocessed items in memory (without ``augment``) or the decoded files (with it);
    each DataLoader worker holds its own cache.
    """

    def __init__(
        self, masks_dir, images_dir, family: Family, grid_xyz=None, spacing_mm=None,
        labels: LabelMapping | None = None, augment: Augment | None = None, cache: bool = True,
        normalisation: str = "robust-volume",
    ):
        self.family, self.normalisation = family, normalisation
        self.grid_xyz = tuple(int(v) for v in (grid_xyz or family.grid_xyz))
        self.spacing_mm = tuple(float(v) for v in (spacing_mm or family.spacing_mm))
        self.direction = family.direction
        self.labels, self.augment, self.cache = labels, augment, cache
        self.pairs = find_pairs(masks_dir, images_dir, family)
        self._items: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._decoded: dict[int, tuple[sitk.Image, sitk.Image]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._items:
            return self._items[index]
        labels, image = self._load(index)
        if self.augment is not None:
            image, labels = self.augment(sitk.Image(image), sitk.Image(labels))  # copies: the cache stays intact
        item = self._to_model_grid(labels, image)
        if self.cache and self.augment is None:
            self._items[index] = item
        return item

    def preload(self) -> None:
        """Read and check every case now (first errors before training starts; fills the cache)."""
        for index in range(len(self)):
            if self.augment is None:
                self[index]
            else:
                self._load(index)

    def _load(self, index: int) -> tuple[sitk.Image, sitk.Image]:
        """Official labels and the image (one component per modality), checked; cached if asked."""
        if index in self._decoded:
            return self._decoded[index]
        mask_path, image_paths = self.pairs[index]
        try:
            labels = to_official(read_mask(mask_path), self.family, self.labels)
        except InputError as error:
            raise InputError(f"{mask_path.name}: {error}") from None
        images = [read_image(p) for p in image_paths]
        for path, image in zip(image_paths, images):
            outside = _uncovered_fraction(labels, image)
            if outside > MAX_UNCOVERED:
                raise InputError(
                    f"{path.name} does not cover mask {mask_path.name} ({100 * outside:.0f}% of the labelled voxels lie "
                    "outside the image); mask and image must be in the same physical space (check their headers)"
                )
        image = images[0] if len(images) == 1 else sitk.Compose([sitk.Resample(i, images[0]) for i in images])
        if self.cache and self.augment is not None:
            self._decoded[index] = (labels, image)
        return labels, image

    def _to_model_grid(self, labels: sitk.Image, image: sitk.Image) -> tuple[torch.Tensor, torch.Tensor]:
        volumes, labels_xyz = self._normalised(labels, image)
        cond = self.family.condition_from_labels(labels_xyz)[0]
        zyx = [v.transpose(2, 1, 0) for v in volumes]  # (X, Y, Z) -> (Z, Y, X), like the condition
        return torch.from_numpy(np.ascontiguousarray(np.stack(zyx))), cond

    def _normalised(self, labels: sitk.Image, image: sitk.Image) -> tuple[list[np.ndarray], np.ndarray]:
        """Each image channel on the model grid in model units, and the labels there, all (X, Y, Z)."""
        mapping = plan_physical(labels, self.grid_xyz, self.spacing_mm, self.direction)
        labels_xyz = mapping.labels_to_model(labels)
        reference = mapping.model_grid.reference_image()
        channels = [image] if image.GetNumberOfComponentsPerPixel() == 1 else [
            sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(image.GetNumberOfComponentsPerPixel())
        ]
        volumes = []
        for channel in channels:
            # outside the image's field of view: its minimum, i.e. background after normalisation
            low = float(sitk.GetArrayViewFromImage(channel).min())
            resampled = sitk.Resample(channel, reference, sitk.Transform(), sitk.sitkLinear, low, sitk.sitkFloat32)
            volume_xyz = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
            intensity = fit_intensity(volume_xyz, self.family, self.normalisation, labels_xyz > 0)
            volumes.append(intensity.forward(volume_xyz))
        return volumes, labels_xyz

    def healthy_landmarks(self, max_cases: int = HEALTHY_LANDMARK_CASES) -> Landmarks | None:
        """Per image channel, the median over (up to ``max_cases`` evenly spread, unaugmented) training images
        of their healthy tissue's landmarks in model units: what insertion anchors a real scan on
        (model_options.py). None for the official normalisation or without healthy tissue."""
        if self.normalisation != "robust-volume" or len(self) == 0:
            return None
        picks = np.unique(np.linspace(0, len(self) - 1, min(max_cases, len(self))).round().astype(int))
        per_case = []
        for index in picks:
            volumes, labels_xyz = self._normalised(*self._load(int(index)))
            healthy = labels_xyz == self.family.tissue_label
            landmarks = [healthy_landmarks(v, healthy) for v in volumes]
            if all(pair is not None for pair in landmarks):
                per_case.append(landmarks)
        if not per_case:
            return None
        median = np.median(np.asarray(per_case, dtype=np.float64), axis=0)  # (channels, 2)
        return tuple((float(m), float(h)) for m, h in median)


# ------------------------------------------------------------------------------ data order, processes


class EpochOrder(Sampler[int]):
    """Endless sample order: epoch e is the permutation seeded by ``seed + e`` (RandomSampler, or
    DistributedSampler's share of it under DDP), starting ``start`` samples in so a resume continues it."""

    def __init__(self, dataset: Dataset, seed: int, rank: int, world: int, batch_size: int, start: int = 0):
        self.dataset, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.batch_size, self.start = batch_size, start
        self.per_epoch = (len(dataset) // world) // batch_size * batch_size  # whole batches only
        if self.per_epoch < 1:
            raise InputError(
                f"{len(dataset)} training case(s) cannot fill a batch of {batch_size} on each of {world} process(es); "
                "add cases or lower --batch"
            )

    def epoch(self, epoch: int) -> list[int]:
        if self.world > 1:
            sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True, seed=self.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.dataset, generator=torch.Generator().manual_seed(self.seed + epoch))
        return list(sampler)[: self.per_epoch]

    def __iter__(self):
        epoch, position = divmod(self.start, self.per_epoch)
        while True:
            yield from self.epoch(epoch)[position:]
            epoch, position = epoch + 1, 0
