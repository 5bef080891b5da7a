"""Slicer side of MedDDPMSynth: scene logic over MRML (no Qt), the background engine process, export.

Importable with the ``slicer-core`` wheels alone (``vtkMRMLScene``, segmentation logic) as well as inside
the Slicer application; it imports no Qt (Testing/Python/test_layering.py checks). The Qt panel, the
parameter node and the dependency installer live beside it in ``MedDDPMSynthSlicerUI``.

Names are imported lazily: importing this package does not import the engine, which needs torch, before
the dependencies are installed.
"""

from importlib import import_module

_EXPORTS = {
    "PRESETS": "jobs",
    "EngineFailure": "jobs",
    "GenerationJob": "jobs",
    "GenerationSettings": "jobs",
    "LabelExport": "segments",
    "SceneLogic": "logic",
    "SegmentMapping": "segments",
    "ras_to_lps": "logic",  # MedDDPMSynthLib.domain.geometry.ras_to_lps, kept here for console scripts
}

#: the scene logic's public methods, offered on the module logic (``slicer.util.getModuleLogic``)
LOGIC_METHODS = (
    "available_models", "import_model", "model_family", "model_timesteps", "model_preview", "settings_for",
    "set_family", "family_of_segmentation", "family_of_volumes", "load_label_image", "tumour_voxels",
    "segment_mapping", "name_segments_by_label", "label_map", "label_array",
    "start_generation", "finish_generation", "cancel_generation", "generate", "show_volumes",
    "shift_tumour", "scale_tumour", "rotate_tumour", "remove_tumour", "add_tumour", "can_undo", "undo_tumour_edit",
    "shift_tumor", "scale_tumor", "rotate_tumor", "remove_tumor", "add_tumor", "undo_tumor_edit",  # earlier spelling
    "edit_history", "begin_move", "set_move", "preview_move", "apply_move", "cancel_move", "is_moving",
    "move_transform",
    "can_regenerate", "start_regeneration", "regenerate", "export_training_pair",
)

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
