"""The Slicer application's module panel (Qt): the widget controller, the parameter node and the installer.

Needs the Slicer application (``qt``, ``slicer.parameterNodeWrapper``); imported only by
``MedDDPMSynth.py``. Everything the panel does is a call into the MRML-only scene logic in
:mod:`MedDDPMSynthSlicerLib`, which imports nothing from here.
"""
