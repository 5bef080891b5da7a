"""Browser front of MedDDPMSynth (``medddpm-synth serve``): an aiohttp page over the Slicer scene logic.

No algorithm lives here: loading, generation (the background engine process), tumour edits and export
are calls into :mod:`MedDDPMSynthSlicerLib`; this package only adds HTTP, security and slice pictures.
"""
