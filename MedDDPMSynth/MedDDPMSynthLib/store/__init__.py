"""The model store: the catalogue file and the named models (import, verify, export, demo)."""
