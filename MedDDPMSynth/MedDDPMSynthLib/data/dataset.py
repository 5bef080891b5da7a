"""A folder of masks (and optional edit sweeps) to a training-ready synthetic dataset, resumable and sharded.

Order of work, for "bad input changes nothing": every refusal (settings, output folder, shard, each
mask of this process) happens before the first write. Then each case is written through a staging
folder (:class:`outputs.StagedOutput`) and only then entered in ``manifest.csv``; a case whose files
were moved in but which is not in the manifest (cancel in between) is removed again. A re-run skips
the cases in the manifest whose files all exist and redoes the rest.

Generation is :mod:`.pipeline`'s (mask of any geometry -> images on the mask's own grid) and
:meth:`SynthesisModel.generate`'s (sample n of a call uses seed ``seed + n``, batched or not), so the
samples of one variant share a base seed (see :func:`variant_seed`) and run several per network pass.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from MedDDPMSynthLib import __version__
from MedDDPMSynthLib.model.api import SynthesisModel
from MedDDPMSynthLib.model.checkpoint import file_sha256
from MedDDPMSynthLib.data.dataset_layout import (
    FORMATS, Layout, complete_cases, locked, read_manifest, write_index, write_json, write_manifest,
)
from MedDDPMSynthLib.data.dataset_plan import EditSettings, Unit, case_id, list_masks, mask_stem, select, units, variant_seed, variants
from MedDDPMSynthLib.errors import InputError, OutputError
from MedDDPMSynthLib.io.outputs import StagedOutput, check_folder_name, check_name_lengths
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, labels_on_model_grid, read_official, tumour_labels
from MedDDPMSynthLib.model.sampling import SamplerSettings

BACKGROUND = -1.0  # the model's background intensity in raw [-1, 1] output


@dataclass
class DatasetRequest:
    masks: Path
    output: Path
    samples_per_mask: int = 1
    edits: EditSettings = field(default_factory=EditSettings)
    format: str = "nnunet"
    seed: int = 0
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    #: how the sampler was chosen (per-case provenance only: it does not change a case, so a folder made
    #: on a GPU with ``exact`` by default continues on a CPU given ``--sampler exact``)
    sampler_choice: dict = field(default_factory=dict)
    labels: str | None = None
    batch: int = 1  # samples per network pass; decides the work units (see dataset_plan)
    shard: tuple[int, int] = (0, 1)


@dataclass
class DatasetSummary:
    written: list[str] = field(default_factory=list)  # cases this call made
    already_complete: int = 0  # cases of this process found complete (resume)
    skipped_edits: list[str] = field(default_factory=list)  # variants the edit batch refused (clipping)
    complete_in_folder: int = 0  # complete cases in the whole folder after this call


def _settings(request: DatasetRequest, model: SynthesisModel, model_sha: str) -> dict:
    """Everything that decides the content of a case: a re-run must match it to continue a folder."""
    return {
        "format": "medddpm-synth dataset", "version": 1, "layout": request.format,
        "model": {"sha256": model_sha, "family": model.family.name,
                  "grid_xyz": list(model.grid_xyz), "spacing_mm": list(model.spacing_mm)},
        "seed": int(request.seed), "samples_per_mask": int(request.samples_per_mask),
        "edits": {**asdict(request.edits), "factors": list(request.edits.factors)},
        "sampler": {**asdict(request.sampler), "steps": request.sampler.evaluations(model.timesteps)},
        "labels": request.labels or "default", "intensity": "raw", "geometry": "physical",
    }


def _read_settings(layout: Layout) -> dict | None:
    try:
        return json.loads(layout.settings.read_text()) if layout.settings.is_file() else None
    except (OSError, ValueError):
        raise InputError(
            f"{layout.settings} is unreadable or not JSON; delete it or choose another -o folder"
        ) from None


def check_output(layout: Layout, settings: dict) -> None:
    """Refuse (without writing) a file as -o, a foreign folder, or a dataset made with other settings."""
    root = layout.root
    check_name_lengths([root / "imagesTr"])
    if root.exists() and not root.is_dir():
        raise OutputError(f"-o {root} is a file; give a folder for the dataset")
    check_folder_name(root)
    _check_writable(root)
    if not root.is_dir():
        return
    old = _read_settings(layout)
    if old is None:
        if any(not p.name.startswith(".") for p in root.iterdir()):
            raise InputError(
                f"{root} is not empty and holds no medddpm-synth dataset; choose an empty or new -o folder"
            )
        return
    if old != settings:
        keys = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise InputError(
            f"{root} holds a dataset made with other settings ({', '.join(keys)}); rerun with its settings "
            f"(see {layout.settings.name}) to continue it, or choose another -o folder"
        )


def _check_writable(root: Path) -> None:
    """The dataset folder (or the folder it will be made in) must be writable: a read-only folder or
    file system is refused before the first write, with advice that fits (freeing space would not help)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {probe}: no write permission or a read-only file system; "
                          "choose another -o folder or make it writable")
    try:  # as root, access() says yes even on a read-only mount: ask the file system
        read_only = os.statvfs(probe).f_flag & os.ST_RDONLY
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise OutputError(f"cannot write in {probe}: the file system is read-only; choose another -o folder")


def _check_request(request: DatasetRequest, model: SynthesisModel) -> None:
    if request.format not in FORMATS:
        raise InputError(f"unknown --format '{request.format}'; use one of {', '.join(FORMATS)}")
    if request.samples_per_mask < 1 or request.batch < 1:
        raise InputError("--samples-per-mask and --batch must be at least 1")
    request.edits.check()
    request.sampler.check(model.timesteps)


def _grouped(mine: list[Unit]) -> list[tuple[Path, list[tuple[int, ...]]]]:
    """Units as (mask, its sample blocks), in list order (units of one mask are contiguous)."""
    groups: list[tuple[Path, list[tuple[int, ...]]]] = []
    for unit in mine:
        if not groups or groups[-1][0] != unit.mask:
            groups.append((unit.mask, []))
        groups[-1][1].append(unit.samples)
    return groups


class _Log:
    """Per-process log file in ``logs/`` (timings live here, never in case files)."""

    def __init__(self, layout: Layout, request: DatasetRequest, rank: int, world: int):
        shard = f"shard-{request.shard[0]}-of-{request.shard[1]}"
        self.path = layout.logs / f"{shard}_rank-{rank}-of-{world}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.path, "a") as handle:
            handle.write(f"{stamp} pid {os.getpid()} {message}\n")


def build_dataset(
    request: DatasetRequest,
    model: SynthesisModel,
    model_name: str | None = None,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], None] | None = None,
    started: Callable[[], None] | None = None,
) -> DatasetSummary:
    """Make this process's share of the dataset and refresh the index files; see the module docstring.

    ``progress(done, total)`` counts this process's cases (written, found complete or skipped) after
    each one; raising from it (e.g. KeyboardInterrupt) stops the run between two complete cases.
    ``started()`` is called once every input is checked, before the first case."""
    _check_request(request, model)
    masks = list_masks(request.masks)
    mine = select(units(masks, request.samples_per_mask, request.batch), request.shard, rank, world)
    model_sha = file_sha256(model.info.path)
    layout = Layout(Path(request.output), request.format, model.family)
    settings = _settings(request, model, model_sha)
    check_output(layout, settings)
    read_manifest(layout)  # a damaged manifest is refused before anything (even the log) is written
    groups = _grouped(mine)
    for mask, _ in groups:  # every mask of this process is checked before anything is written
        mask_request = _mask_request(request, mask)
        labels_on_model_grid(mask_request, model, read_official(mask_request, model, []))  # warnings: per mask below

    with locked(layout):
        check_output(layout, settings)  # another process may have started the folder meanwhile
        if not layout.settings.is_file():
            write_json(layout.settings, settings)
    log = _Log(layout, request, rank, world)
    log(f"start: {len(mine)} unit(s) of {len(masks)} mask(s) x {request.samples_per_mask} sample(s); model "
        f"{model_name} on {model.device}, batch {request.batch}, medddpm-synth {__version__}"
        + (f"; sampler {request.sampler_choice}" if request.sampler_choice else ""))
    if started is not None:
        started()
    run = _Run(layout, request, model, model_name, model_sha, log, progress,
               done=complete_cases(layout, read_manifest(layout)), planned=sum(len(u.samples) for u in mine))
    for mask, blocks in groups:
        run.make_mask(mask, blocks)
    summary = run.summary
    with locked(layout):
        summary.complete_in_folder = write_index(layout, tumour_labels(model))
    log(f"done: {len(summary.written)} written, {summary.already_complete} already complete, "
        f"{len(summary.skipped_edits)} skipped by the edit batch; {summary.complete_in_folder} complete in the folder")
    return summary


def _mask_request(request: DatasetRequest, mask: Path) -> GenerateRequest:
    return GenerateRequest(mask=mask, output=Path(request.output), labels=request.labels, sampler=request.sampler)


@dataclass
class _Run:
    """One process's work: its masks' variants and sample blocks, the cases and the progress count."""

    layout: Layout
    request: DatasetRequest
    model: SynthesisModel
    model_name: str | None
    model_sha: str
    log: Callable[[str], None]
    progress: Callable[[int, int], None] | None
    done: dict  # complete cases (manifest rows) when the run started
    planned: int  # this process's samples per variant (the total is known once the variants are)
    summary: DatasetSummary = field(default_factory=DatasetSummary)
    counted: int = 0
    total: int | None = None

    def count(self, cases: int) -> None:
        self.counted += cases
        if self.progress is not None and cases:
            self.progress(self.counted, self.total or self.counted)

    def make_mask(self, mask: Path, blocks: list[tuple[int, ...]]) -> None:
        mask_request = _mask_request(self.request, mask)
        anatomy: list[str] = []  # e.g. a stray tumour voxel: generated, and said in the log
        official = read_official(mask_request, self.model, anatomy)
        for warning in anatomy:
            self.log(f"warning: {mask.name}: {warning}")
        all_variants = list(variants(official, self.model.family, self.request.edits))
        self.total = self.total or self.planned * len(all_variants)  # every mask has as many variants
        source = (mask, file_sha256(mask), mask_stem(mask))
        for variant in all_variants:
            if variant.label_map is None:  # refused by the edit batch (clips too much): no cases
                self.log(f"skipped {variant.name} of {mask.name}: {variant.record.get('skipped')}")
                self.summary.skipped_edits.extend(case_id(source[2], variant.name, n) for b in blocks for n in b)
                self.count(sum(len(b) for b in blocks))
                continue
            self.make_variant(mask_request, variant, blocks, source)

    def make_variant(self, mask_request: GenerateRequest, variant, blocks, source) -> None:
        mask, mask_sha, stem = source
        base = variant_seed(self.request.seed, stem, variant.name)
        labels = mapping = None
        for block in blocks:
            ids = {n: case_id(stem, variant.name, n) for n in block}
            todo = [n for n in block if ids[n] not in self.done]
            self.summary.already_complete += len(block) - len(todo)
            self.count(len(block) - len(todo))
            if not todo:
                continue
            if labels is None:
                labels, mapping, warnings = labels_on_model_grid(mask_request, self.model, variant.label_map)
                for warning in warnings:
                    self.log(f"warning: {variant.name} of {mask.name}: {warning}")
            # the whole block in one pass, even when only part of it is missing: same batch, same bits
            started = time.perf_counter()
            images = self.model.generate(labels, base + block[0], len(block), len(block), sampler=self.request.sampler)
            seconds = (time.perf_counter() - started) / len(block)
            for n in todo:
                self.write_case(ids[n], images[n - block[0]], mapping, variant, mask, mask_sha, n, base + n)
                self.summary.written.append(ids[n])
                self.log(f"case {ids[n]} written (seed {base + n}, {seconds:.2f} s per sample)")
                self.count(1)

    def provenance(self, case: str, variant, mask: Path, mask_sha: str, sample: int, seed: int) -> dict:
        sampler = self.request.sampler
        return {
            "case": case,
            "mask": {"file": mask.name, "sha256": mask_sha, "labels": self.request.labels or "default"},
            "edit": {"variant": variant.name, **variant.record},
            "sample": sample,
            "seed": seed,
            "model": {"name": self.model_name, "sha256": self.model_sha, "family": self.model.family.name,
                      "grid_xyz": list(self.model.grid_xyz), "spacing_mm": list(self.model.spacing_mm)},
            "sampler": {**asdict(sampler), "steps": sampler.evaluations(self.model.timesteps),
                        **self.request.sampler_choice},
            "intensity": "raw [-1, 1], background -1",
            "files": [p.relative_to(self.layout.root).as_posix() for p in self.layout.case_files(case)],
            "medddpm_synth": __version__,
        }

    def write_case(self, case, images, mapping, variant, mask, mask_sha, sample, seed) -> None:
        """Images, label map and provenance of one case, then its manifest row; all or nothing."""
        layout = self.layout
        record = self.provenance(case, variant, mask, mask_sha, sample, seed)
        entered = False
        try:
            with StagedOutput(layout.root) as staged:
                for c, path in enumerate(layout.images(case)):
                    staged.write_image(mapping.image_to_input(images[c], BACKGROUND), path)
                staged.write_image(sitk.Cast(variant.label_map, sitk.sitkUInt8), layout.label(case))
                staged.write_json(record, layout.provenance(case))
                staged.commit()
            with locked(layout):
                rows = read_manifest(layout)
                rows[case] = {
                    "case": case, "mask": mask.name, "mask_sha256": mask_sha, "edit": variant.name,
                    "sample": sample, "seed": seed, "files": layout.relative(layout.case_files(case)),
                }
                write_manifest(layout, rows)
                entered = True
        finally:
            # cancelled or failed before the manifest took the case: leave only complete cases
            if not entered and case not in read_manifest(layout):
                for path in layout.case_files(case):
                    path.unlink(missing_ok=True)
