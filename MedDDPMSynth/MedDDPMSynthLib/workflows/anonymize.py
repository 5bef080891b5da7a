"""A synthetic head with a real scan's outline: the scan's head (or brain) mask, generated without tumour.

The mask comes from :func:`head_mask.auto_head_mask`; every other tissue of the family is mapped to a label
value the mask does not hold, so the condition is "tissue here, no tumour anywhere". Generation and the
all-or-nothing writing are :func:`pipeline.generate_files`'.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import SimpleITK as sitk

from MedDDPMSynthLib.domain.head_mask import auto_head_mask
from MedDDPMSynthLib.io.mask_io import read_mask
from MedDDPMSynthLib.io.outputs import split_image_name
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, GenerationResult, generate_files
from MedDDPMSynthLib.model.sampling import ProgressCallback, SamplerSettings


def anonymize(model, scan: str | Path, output: str | Path, seed: int = 0, method: str = "otsu",
              overwrite: bool = False, model_name: str | None = None,
              progress: ProgressCallback | None = None, sampler: SamplerSettings | None = None,
              sampler_choice: dict | None = None) -> GenerationResult:
    """Generate a head on ``scan``'s grid from its automatic head mask (``method``: the threshold method of
    :func:`head_mask.auto_head_mask`) with ``sampler`` (default: the request's default); the files are
    written as ``generate`` writes them, ``sampler_choice`` recorded in their provenance."""
    image = read_mask(scan, "scan")  # the checks of a mask: 3-D, scalar, finite
    head = auto_head_mask(image, method=method)
    stem, _ = split_image_name(Path(scan))
    tissue = model.family.tissue_name
    labels = f"{tissue}=1," + ",".join(f"{n}={100 + i}" for i, n in enumerate(model.family.condition_names)
                                      if n != tissue)  # no tumour: the other tissues get unused values
    with tempfile.TemporaryDirectory() as tmp:
        mask_path = Path(tmp) / f"{stem}_anon.nii.gz"
        sitk.WriteImage(head, str(mask_path), useCompression=True)
        request = GenerateRequest(mask=mask_path, output=Path(output), seed=seed, labels=labels, overwrite=overwrite,
                                  **({"sampler": sampler} if sampler is not None else {}),
                                  **({"sampler_choice": sampler_choice} if sampler_choice is not None else {}))
        return generate_files(request, model, model_name=model_name, progress=progress)
