"""Mask file in, files out: generate, local re-generation, tumour insertion."""
