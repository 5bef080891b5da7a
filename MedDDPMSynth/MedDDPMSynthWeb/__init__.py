"""Browser front of MedDDPMSynth (``medddpm-synth serve``): a trame-slicer app over the Slicer scene logic.

No algorithm lives here: loading, generation (the background engine process), tumour edits and export
are calls into :mod:`MedDDPMSynthSlicerLib`; trame-slicer gives the views and the segment editor, and
this package adds the Med-DDPM panel, the access token and upload checks.
"""
