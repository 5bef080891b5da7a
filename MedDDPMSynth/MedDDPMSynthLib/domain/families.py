"""The two official model families and their exact tensor layouts.

A family says which label values feed which condition channel, how condition values are scaled, which
image channels the model writes, and on which grid the released weights were trained. It is also the one
home of the family's label knowledge: which tissue holds the tumour, which labels are tumour (and their
nesting, outer to inner), the training grid's direction, and the channels' display names. Layout of every
model tensor: (B, C, D, H, W) = (B, C, Z, Y, X) for a NIfTI-ordered label array (X, Y, Z) = (i, j, k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from MedDDPMSynthLib.errors import CheckpointError, InputError


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    #: tissue name of each condition channel, in channel order
    condition_names: tuple[str, ...]
    #: default label value of each condition channel (in the official label convention)
    condition_labels: tuple[int, ...]
    #: True: one-hot scaled to {-1, +1} (whole-head); False: one-hot {0, 1} (BraTS)
    signed_condition: bool
    #: names of the image channels the model outputs, in channel order
    modalities: tuple[str, ...]
    #: grid (X, Y, Z) voxels and spacing (mm) of the released weights
    grid_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    #: the condition that is the non-tumour tissue holding the tumour (whole-head: head, BraTS: brain)
    tissue_name: str
    #: the tumour labels from the outermost layer to the innermost (BraTS: oedema around enhancing around
    #: necrotic); the order edits keep nested and the Slicer module paints segments in
    tumour_layers: tuple[int, ...]
    #: direction (row-major, as SimpleITK reports it) of the grid the released weights were trained on
    direction: tuple[float, ...]
    #: display name of each image channel (nnU-Net ``dataset.json`` channel names), in channel order
    channel_names: tuple[str, ...]
    #: label value map applied when the official script exports the mask (identity where absent)
    official_mask_export: tuple[tuple[int, int], ...] = ()

    @property
    def condition_channels(self) -> int:
        return len(self.condition_names)

    @property
    def image_channels(self) -> int:
        return len(self.modalities)

    @property
    def tissue_label(self) -> int:
        """Official label of the tissue that holds the tumour (whole-head 1, BraTS 4)."""
        return self.label_of(self.tissue_name)

    @property
    def tumour_labels(self) -> tuple[int, ...]:
        """Official labels of the tumour, in condition-channel order (whole-head (2,), BraTS (1, 2, 3))."""
        return tuple(v for v in self.condition_labels if v != self.tissue_label)

    @property
    def paint_order(self) -> tuple[str, ...]:
        """Condition names, tissue first, then the tumour layers outer to inner (later ones paint on top)."""
        names = dict(zip(self.condition_labels, self.condition_names))
        return (self.tissue_name, *(names[v] for v in self.tumour_layers))

    def label_of(self, condition_name: str) -> int:
        return self.condition_labels[self.condition_names.index(condition_name)]

    def condition_from_labels(self, labels_xyz: np.ndarray) -> torch.Tensor:
        """One-hot condition (1, C, Z, Y, X) float32 from an integer label array (X, Y, Z).

        Label values not listed in ``condition_labels`` (e.g. background) give all-zero one-hot, as in
        the official pipeline; validate labels before calling this when unknown values are an error.
        """
        labels = np.asarray(labels_xyz)
        if labels.ndim != 3:
            raise ValueError(f"expected a 3-D label array, got shape {labels.shape}")
        onehot = np.stack([labels == value for value in self.condition_labels]).astype(np.float32)
        if self.signed_condition:
            onehot = onehot * 2 - 1
        # (C, X, Y, Z) -> (C, Z, Y, X), then a batch axis
        return torch.from_numpy(np.ascontiguousarray(onehot.transpose(0, 3, 2, 1)))[None]

    @staticmethod
    def images_to_xyz(images: torch.Tensor) -> np.ndarray:
        """Model output (B, C, D, H, W) -> float32 numpy (B, C, X, Y, Z) (D <-> W transpose)."""
        return np.ascontiguousarray(images.detach().float().cpu().numpy().transpose(0, 1, 4, 3, 2))

    def official_export_labels(self, labels_xyz: np.ndarray) -> np.ndarray:
        """The label map the official script writes beside its images (BraTS: 4->0, 2->1, 1->2)."""
        labels = np.asarray(labels_xyz)
        out = labels.copy()
        for old, new in self.official_mask_export:
            out[labels == old] = new
        return out


WHOLE_HEAD = Family(
    name="whole_head",
    title="Whole-head T1c (background / head / tumour)",
    condition_names=("head", "tumor"),
    condition_labels=(1, 2),
    signed_condition=True,
    modalities=("t1c",),
    grid_xyz=(128, 128, 128),
    spacing_mm=(1.5, 1.5, 1.5),
    tissue_name="head",
    tumour_layers=(2,),
    # read with SimpleITK 2.5 from med-ddpm-samples/whole_head/mask/sample_0.nii.gz (RAS affine in NIfTI terms)
    direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    channel_names=("T1c",),
)

BRATS = Family(
    name="brats",
    title="BraTS 4-modality (necrotic / oedema / enhancing / brain)",
    condition_names=("necrotic", "edema", "enhancing", "brain"),
    condition_labels=(1, 2, 3, 4),
    signed_condition=False,
    modalities=("t1", "t1ce", "t2", "flair"),
    grid_xyz=(192, 192, 144),
    spacing_mm=(1.0, 1.0, 1.0),
    tissue_name="brain",
    tumour_layers=(2, 3, 1),
    # read with SimpleITK 2.5 from med-ddpm-samples/brats2021/seg/BraTS2021_00529_seg.nii.gz (LPS affine)
    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    channel_names=("T1", "T1ce", "T2", "FLAIR"),
    official_mask_export=((4, 0), (2, 1), (1, 2)),
)

FAMILIES = {f.name: f for f in (WHOLE_HEAD, BRATS)}


def family_named(name: "str | Family") -> Family:
    """The family of a name (a Family passes through), or an InputError naming the choices."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise InputError(f"unknown model family '{name}'; use {' or '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_channels(in_channels: int, out_channels: int) -> Family:
    """Recognise the family from the denoiser's input/output channel counts."""
    for family in FAMILIES.values():
        if out_channels == family.image_channels and in_channels == out_channels + family.condition_channels:
            return family
    raise CheckpointError(
        f"the model has {in_channels} input and {out_channels} output channels, which matches no "
        "Med-DDPM family (whole-head: 3 in / 1 out; BraTS: 8 in / 4 out); use a whole-head or BraTS "
        "Med-DDPM checkpoint"
    )
