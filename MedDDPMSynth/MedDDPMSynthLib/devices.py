"""The compute devices a user may name (``--device``, the Slicer module's device choice).

``auto`` picks CUDA, then Apple MPS, then the CPU (:func:`MedDDPMSynthLib.model.api.resolve_device`). Kept free
of torch so the Slicer panel can offer the choices before the engine's dependencies are installed.
"""

DEVICES = ("auto", "cpu", "cuda", "mps")
