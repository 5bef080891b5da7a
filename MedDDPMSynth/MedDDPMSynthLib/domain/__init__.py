"""Domain knowledge: model families, label conventions, geometry, normalisation, tumour edits."""
