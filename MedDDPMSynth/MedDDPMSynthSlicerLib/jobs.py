"""Generation settings and background jobs: the engine command for a label map, its temporary folder.

A job owns one temporary folder (the mask written as NIfTI, the engine's outputs) and one
:class:`process.EngineProcess`. Whatever happens (finish, failure, cancel) the folder is deleted.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import SimpleITK as sitk

from MedDDPMSynthLib.errors import GenerationCancelled, MedDDPMError

from . import process

#: the widget's sampler presets: the engine's (presets.py), capitalised as labels
PRESETS = {"Preview": "preview", "Exact": "exact"}


def default_preset_label(device: str = "auto") -> str:
    """The engine's per-device default (Preview on a CPU, Exact on a GPU) as a widget label (needs torch)."""
    from MedDDPMSynthLib.model.api import resolve_device
    from MedDDPMSynthLib.model.presets import default_preset

    try:
        engine = default_preset(resolve_device(device))
    except MedDDPMError:  # a device that is not there: the engine will refuse it when the job starts
        engine = "preview"
    return next(label for label, name in PRESETS.items() if name == engine)


class EngineFailure(MedDDPMError):
    """The engine process refused the input or failed; the message is the engine's one line."""

    exit_code = 1


@dataclass
class GenerationSettings:
    model: str = "demo"
    samples: int = 1
    seed: int = 0
    sampler: str = "dpm++"
    steps: int | None = 25
    spacing: str = "quadratic"
    eta: float = 0.0
    precision: str = "fp32"
    device: str = "auto"
    margin_mm: float = 10.0  # local re-generation
    harmonize: int = 3
    #: the engine preset these settings came from (then the engine is asked for it by name, so it records it)
    engine_preset: str | None = None

    @classmethod
    def preset(cls, name: str, timesteps: int | None = None, preview: str | None = None, **overrides) -> "GenerationSettings":
        """A preset, as the engine resolves it for a model with ``timesteps`` steps (its preview never asks
        more steps than a small test model has) that recommends ``preview`` (a sampler spec, the catalogue's
        ``preview``; None: the built-in preview), so options given on top change the model's own preview."""
        from MedDDPMSynthLib.model.presets import parse_sampler_spec, preset_settings, preview_metadata

        if name not in PRESETS:
            raise MedDDPMError(f"unknown preset '{name}'; use {' or '.join(PRESETS)}")
        metadata = preview_metadata(parse_sampler_spec(preview), timesteps or 1000) if preview else None
        engine = preset_settings(PRESETS[name], timesteps or 1000, metadata)
        values = {"sampler": engine.name, "steps": engine.steps, "spacing": engine.spacing, "eta": engine.eta,
                  "precision": engine.precision, "engine_preset": PRESETS[name]}
        if {"sampler", "steps", "spacing", "eta", "precision"} & set(overrides):
            values["engine_preset"] = None  # no longer the preset: the engine gets the options themselves
        return replace(cls(**values), **overrides)

    def arguments(self) -> list[str]:
        args = ["--model", self.model, "--samples", str(self.samples), "--seed", str(self.seed), "--device", self.device]
        if self.engine_preset:
            return [*args, "--sampler", self.engine_preset]
        args += ["--sampler", self.sampler, "--step-spacing", self.spacing, "--eta", str(self.eta),
                 "--precision", self.precision]
        if self.steps and self.sampler != "ddpm":
            args += ["--steps", str(self.steps)]
        return args

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationJob:
    """A generation (or local re-generation) running in the background for one segmentation."""

    kind: str  # "generate" or "regenerate"
    segmentation_id: str
    export: object  # segments.LabelExport
    settings: GenerationSettings
    folder: Path
    engine: process.EngineProcess | None = None
    target_ids: list[str] = field(default_factory=list)  # regenerate: the volume nodes to update

    @property
    def state(self) -> str:
        return self.engine.state if self.engine else process.FAILED

    @property
    def running(self) -> bool:
        return self.engine is not None and self.engine.running

    def poll(self):
        return self.engine.poll() if self.engine else []

    def fraction(self) -> float:
        return self.engine.fraction() if self.engine else 0.0

    def eta_seconds(self):
        return self.engine.eta_seconds() if self.engine else None

    @property
    def warnings(self) -> list[str]:
        """The engine's warning lines so far (e.g. stray voxels generated anyway)."""
        return list(self.engine.warnings) if self.engine else []

    def progress_text(self) -> str:
        """"Step 12 of 25, about 40 s left" (empty before the first step): what every front shows."""
        if self.engine is None or not self.engine.total:
            return ""
        eta = self.eta_seconds()
        left = f", about {duration_text(eta)} left" if eta is not None else ""
        return f"Step {self.engine.done} of {self.engine.total}{left}"

    def wait(self, timeout: float | None = None, progress=None) -> str:
        return self.engine.wait(timeout, progress)

    def cancel(self) -> None:
        """Kill the engine (and its children) and delete every file of the job."""
        if self.engine is not None:
            self.engine.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def check_success(self) -> None:
        """Raise the engine's message (or the cancel) unless the job finished."""
        if self.state == process.FINISHED:
            return
        if self.state == process.CANCELLED:
            raise GenerationCancelled("generation cancelled; nothing was added to the scene")
        if self.state == process.RUNNING:
            raise MedDDPMError("the generation is still running; wait for it or cancel it")
        raise EngineFailure(self.engine.error if self.engine and self.engine.error else "the engine failed")


def duration_text(seconds: float | None) -> str:
    """``"40 s"`` or ``"2 min 05 s"``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def new_folder(base: str | Path | None) -> Path:
    if base is not None:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="MedDDPMSynth-", dir=None if base is None else str(base)))


def write_image(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path), useCompression=True)
    return path

