"""Helpers shared by the command-line tests: synthetic masks, in-process CLI calls, file snapshots."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO / "Testing" / "Data" / "official"
TINY_CKPT = OFFICIAL / "tiny_wholehead_ckpt.pt"

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def oblique_direction(degrees: float = 25.0) -> tuple[float, ...]:
    """A rotation about z then x: no axis is aligned with the patient axes."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).flatten().tolist())


def head_labels(
    size=(40, 40, 30),
    spacing=(4.0, 4.0, 4.0),
    head: int = 1,
    tumour: int | None = 2,
    tumour_centre=(0.55, 0.5, 0.5),
    tumour_radius_mm: float = 14.0,
) -> np.ndarray:
    """(X, Y, Z) labels: an ellipsoid head filling ~80% of the field, a spherical tumour inside it."""
    idx = np.indices(size).astype(float)
    centre = (np.array(size, float) - 1) / 2
    semi = 0.4 * np.array(size, float)
    r2 = sum(((idx[a] - centre[a]) / semi[a]) ** 2 for a in range(3))
    labels = np.zeros(size, np.uint8)
    labels[r2 <= 1] = head
    if tumour is not None:
        c = np.array(tumour_centre, float) * (np.array(size, float) - 1)
        d2 = sum(((idx[a] - c[a]) * spacing[a]) ** 2 for a in range(3))
        labels[d2 <= tumour_radius_mm**2] = tumour
    return labels


def image_from_xyz(array_xyz: np.ndarray, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0), direction=LPS) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def write_mask(path: Path, labels_xyz: np.ndarray | None = None, spacing=(4.0, 4.0, 4.0),
               origin=(-80.0, -80.0, -60.0), direction=LPS) -> Path:
    labels_xyz = head_labels(spacing=spacing) if labels_xyz is None else labels_xyz
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image_from_xyz(labels_xyz, spacing, origin, direction), str(path), useCompression=True)
    return path


def geometry_of(image: sitk.Image) -> dict:
    return {
        "size": tuple(image.GetSize()),
        "spacing": np.array(image.GetSpacing()),
        "origin": np.array(image.GetOrigin()),
        "direction": np.array(image.GetDirection()),
    }


def assert_same_geometry(image: sitk.Image, reference: sitk.Image, atol: float = 1e-4) -> None:
    a, b = geometry_of(image), geometry_of(reference)
    assert a["size"] == b["size"]
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(a[key], b[key], atol=atol, err_msg=key)


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``medddpm-synth ARGS`` in this process: (exit code, stdout, stderr). argparse exits count too."""
    from MedDDPMSynthLib.cli.commands import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors, --help
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def message_lines(stderr: str) -> list[str]:
    """stderr lines without the tqdm progress bar (which redraws with carriage returns)."""
    lines = []
    for line in stderr.replace("\r", "\n").split("\n"):
        if line.strip() and not line.startswith("generating:"):
            lines.append(line)
    return lines


def snapshot(root: Path) -> dict:
    """Every file and folder below ``root``: path -> (kind, sha256 of the bytes, mtime_ns)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            state[rel] = ("dir", None, None)
        else:
            state[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return state


def save_random_checkpoint(path: Path, config, timesteps: int, seed: int = 0, noise: float = 0.05) -> Path:
    """An official-format {step, model, ema} checkpoint with randomised weights (non-zero outputs)."""
    from MedDDPMSynthLib import GaussianDiffusion, save_official_checkpoint

    torch.manual_seed(seed)
    model = GaussianDiffusion(config, timesteps)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    sd = model.state_dict()
    save_official_checkpoint(path, sd, sd, step=1)
    return path


def interruptible() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: restore SIGINT's default disposition.

    A suite started as a background job (``pytest &`` from a non-interactive shell) inherits SIGINT ignored, and
    so would every child; a Python child that starts with SIGINT ignored never installs its KeyboardInterrupt
    handler, so the signal would be silently dropped and the test would wait for the whole run. Ctrl-C at a
    terminal reaches a foreground command whose SIGINT is at its default; this gives the child exactly that.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class RefusalRow:
    """One row of a refusal table: a bad input and what its one-line message must say."""

    build: Callable[..., list]  # (the table's setup) -> command-line arguments
    phrase: str  # names the problem
    fix: str  # says what to do
    code: int = 2
    usage: bool = False  # an argparse usage error (usage line + "... error: ...")


def refusal_table():
    """An empty table and its ``@case(name, phrase, fix, code=2, usage=False)`` registering decorator."""
    cases: dict[str, RefusalRow] = {}

    def case(name: str, phrase: str, fix: str, code: int = 2, usage: bool = False):
        def register(build):
            assert name not in cases
            cases[name] = RefusalRow(build, phrase, fix, code, usage)
            return build

        return register

    return cases, case


def assert_one_clear_refusal(row: RefusalRow, code: int, out: str, err: str, lines: list[str], usage_error: str) -> None:
    """What every refusal-table row must show: its exit code, no traceback, exactly one ``error:`` line (or
    argparse's usage line then ``usage_error``, a regex) naming the problem and the fix."""
    assert code == row.code, err
    assert "Traceback" not in err + out
    if row.usage:
        assert lines[0].startswith("usage:") and re.match(usage_error, lines[-1]), err
        message = lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        message = lines[0]
    assert row.phrase in message and row.fix in message, message
