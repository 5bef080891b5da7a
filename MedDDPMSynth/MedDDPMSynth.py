"""3D Slicer scripted module: synthetic brain MRI from a segmentation with Med-DDPM.

The algorithm lives in the Slicer-free engine package ``MedDDPMSynthLib``; this file is the Slicer
front (module metadata now; the widget, scene logic and self-test follow the module template).
"""

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class MedDDPMSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDDPM Synth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDDPMSynth developers"]
        self.parent.helpText = _(
            "Generate a synthetic 3-D brain MRI from a label mask (whole-head T1c, or BraTS "
            "T1/T1ce/T2/FLAIR) with the Med-DDPM conditional diffusion model. Paint the head/brain and "
            "the tumour in the Segment Editor, choose a model and click Generate."
        )
        self.parent.acknowledgementText = _(
            "Med-DDPM: Z. Dorjsembe, H.-K. Pao, S. Odonchimed, F. Xiao, 'Conditional Diffusion Models "
            "for Semantic 3D Brain MRI Synthesis', IEEE Journal of Biomedical and Health Informatics "
            "28(7):4084-4093, 2024 (arXiv:2305.18453). The example mask is derived from the ICBM 2009a "
            "nonlinear symmetric MNI152 template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
            "Imaging Centre, Montreal Neurological Institute, McGill University)."
        )
