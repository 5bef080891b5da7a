"""Names of the MRML node attributes the module writes on generated volumes (one home for every reader).

Volumes carry where they came from, so Export and Regenerate work on any scene, also a saved and
reloaded one: the model, modality, seed, source segmentation, engine provenance, the sha256 of the label
voxels they were generated from, and which generation (set of samples) they belong to.
"""

PREFIX = "MedDDPMSynth"
MODEL = f"{PREFIX}.model"
MODALITY = f"{PREFIX}.modality"
SEED = f"{PREFIX}.seed"
SEGMENTATION = f"{PREFIX}.segmentation"
PROVENANCE = f"{PREFIX}.provenance"
MASK_SHA256 = f"{PREFIX}.maskSha256"
GENERATION = f"{PREFIX}.generation"
