"""Automatic head / brain masks: the MNI template and the bundled example mask, plus a noisy phantom."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.head_mask import auto_head_mask

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"


def _template_dir() -> Path | None:
    """nilearn's bundled MNI152 2009a files, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if (folder / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").exists() else None


TEMPLATE = _template_dir()
needs_template = pytest.mark.skipif(
    TEMPLATE is None, reason="MNI template not found: pip install --no-deps nilearn==0.14.1 (it ships the files)"
)


def _template(name: str) -> sitk.Image:
    return sitk.ReadImage(str(TEMPLATE / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return 2 * float((x & y).sum()) / float(x.sum() + y.sum())


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return all(getattr(a, g)() == getattr(b, g)() for g in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"))


@needs_template
def test_brain_mask_of_the_mni_template_matches_its_tissue_maps():
    t1 = _template("t1")  # skull-stripped, so the automatic mask is a brain mask
    reference = sitk.BinaryThreshold((_template("gm") + _template("wm")) / 255.0, 0.5, 1e9, 1, 0)
    reference = sitk.RelabelComponent(sitk.ConnectedComponent(reference)) == 1
    reference = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(reference, [2, 2, 2], sitk.sitkBall, 1))
    mask = auto_head_mask(t1)
    assert _same_geometry(mask, t1) and mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
    assert _dice(mask, reference) >= 0.95


@needs_template
@pytest.mark.parametrize("method", ["otsu", "triangle"])
def test_brain_mask_matches_the_bundled_example_mask(method):
    example = sitk.ReadImage(str(EXAMPLE_MASK))  # made from the same template's GM + WM at 1.5 mm
    t1 = sitk.Resample(_template("t1"), example, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert _dice(auto_head_mask(t1, method), example) >= 0.95


def _phantom(direction=None) -> tuple[sitk.Image, sitk.Image]:
    """Noisy oblique anisotropic 'head': bright scalp, grey brain, dark ventricles; and its true mask."""
    size, spacing = (72, 80, 40), (1.2, 1.0, 2.4)
    idx = np.indices(size[::-1]).astype(float)  # (z, y, x)
    centre = (np.array(size[::-1]) - 1) / 2
    r = np.sqrt(sum(((idx[a] - centre[a]) * spacing[::-1][a] / semi) ** 2 for a, semi in enumerate((40, 35, 30))))
    ventricle = np.sqrt(sum(((idx[a] - centre[a]) * spacing[::-1][a] / semi) ** 2 for a, semi in enumerate((8, 6, 10))))
    rng = np.random.default_rng(3)
    values = np.where(r <= 1, 60.0, 0.0) + np.where((r > 0.9) & (r <= 1), 40.0, 0.0)
    values[ventricle <= 1] = 8.0
    values = np.abs(values + rng.normal(0, 5.0, values.shape))  # magnitude images: Rician-like background
    image = sitk.GetImageFromArray(values.astype(np.float32))
    truth = sitk.GetImageFromArray((r <= 1).astype(np.uint8))
    for item in (image, truth):
        item.SetSpacing(spacing)
        item.SetOrigin((10.0, -20.0, 5.0))
        if direction is not None:
            item.SetDirection(direction)
    return image, truth


@pytest.mark.parametrize("method", ["otsu", "triangle"])
def test_phantom_head_mask_fills_ventricles_and_ignores_noise(method):
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    image, truth = _phantom((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    mask = auto_head_mask(image, method)
    assert _same_geometry(mask, image)
    assert _dice(mask, truth) >= 0.95
    centre = [v // 2 for v in image.GetSize()]
    assert mask[centre] == 1  # the dark ventricle is inside the mask
    components = sitk.ConnectedComponent(mask)
    assert int(sitk.GetArrayViewFromImage(components).max()) == 1


def test_refuses_images_it_cannot_threshold():
    flat = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    with pytest.raises(InputError, match="constant"):
        auto_head_mask(flat)
    with pytest.raises(InputError, match="scalar"):
        auto_head_mask(sitk.Image([20, 20, 20], sitk.sitkVectorFloat32, 3))
    image, _ = _phantom()
    with pytest.raises(InputError, match="unknown threshold"):
        auto_head_mask(image, "kmeans")
