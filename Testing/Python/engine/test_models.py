"""The model manager: catalogue, import/verify/remove, refusals that leave nothing behind, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from MedDDPMSynthLib.store import models
from MedDDPMSynthLib.cli.commands import main
from MedDDPMSynthLib.errors import CheckpointError, InputError, MedDDPMError, OutputError

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

TINY = Path(__file__).resolve().parents[2] / "Data" / "official" / "tiny_wholehead_ckpt.pt"


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(path))
    return path


@pytest.fixture()
def source(tmp_path) -> Path:
    """A private copy of the tiny official checkpoint, so that tests can check it stays untouched."""
    path = tmp_path / "src" / "tiny_wholehead_ckpt.pt"
    path.parent.mkdir()
    shutil.copyfile(TINY, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(home: Path) -> tuple:
    """Everything in the data home, to prove that a refused import changed nothing."""
    catalogue = home / "models.json"
    files = sorted(p.name for p in (home / "models").iterdir()) if (home / "models").exists() else []
    return files, catalogue.read_bytes() if catalogue.exists() else None


def test_import_records_the_model_and_copies_it_byte_identical(home, source):
    before = (sha256(source), source.stat().st_mtime_ns)
    entry = models.import_model(source)
    assert entry["name"] == "tiny_wholehead_ckpt"
    assert entry["family"] == "whole_head" and entry["timesteps"] == 10
    assert entry["config"]["model_channels"] == 32 and entry["config"]["channel_mult"] == [1, 1]
    assert entry["sha256"] == sha256(TINY) and entry["size_bytes"] == TINY.stat().st_size
    assert entry["grid_xyz"] == [128, 128, 128] and entry["spacing_mm"] == [1.5, 1.5, 1.5]
    assert entry["file"] == "tiny_wholehead_ckpt.pt" and entry["known_as"] is None
    assert entry["source"] == str(source.resolve()) and entry["imported_at"].endswith("+00:00")

    stored = home / "models" / entry["file"]
    assert stored.read_bytes() == TINY.read_bytes()
    assert (sha256(source), source.stat().st_mtime_ns) == before
    catalogue = json.loads((home / "models.json").read_text())
    assert catalogue["version"] == 1 and catalogue["models"] == [entry]
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny_wholehead_ckpt.pt"]


def test_list_shows_demo_first_then_imported(home, source):
    models.import_model(source, name="zeta")
    models.import_model(source, name="alpha")
    listed = models.list_models()
    assert [e["name"] for e in listed] == ["demo", "alpha", "zeta"]
    demo = listed[0]
    assert demo["builtin"] and demo["family"] == "whole_head"
    assert demo["note"] == "tiny_random_test_model.safetensors, chosen by MEDDDPMSYNTH_DEMO_MODEL"  # conftest
    assert demo["grid_xyz"] == [32, 32, 32] and demo["spacing_mm"] == [6.0, 6.0, 6.0]  # from the file itself
    assert models.demo_model_path().name == "tiny_random_test_model.safetensors"
    assert not (home / "models" / "demo.pt").exists()
    assert all(e["name"] != "demo" for e in json.loads((home / "models.json").read_text())["models"])


def test_resolve_by_name_path_and_demo(home, source, tmp_path):
    models.import_model(source, name="mine")
    assert models.resolve_model("mine") == home / "models" / "mine.pt"
    assert models.resolve_model(str(source)) == source
    assert models.resolve_model(source) == source
    assert models.resolve_model("demo") == models.demo_model_path()
    with pytest.raises(InputError, match="models list.*models import") as error:
        models.resolve_model("nothing-here")
    assert "demo, mine" in str(error.value)
    with pytest.raises(InputError, match="available: demo, mine"):
        models.get_entry("nothing-here")


def test_duplicate_name_refused_and_overwrite_replaces(home, source, tmp_path):
    first = models.import_model(source, name="m")
    with pytest.raises(InputError, match="exists already.*--overwrite"):
        models.import_model(source, name="m", grid_xyz=(64, 64, 64))
    with pytest.raises(InputError, match="exists already"):
        models.import_model(source, name="M")  # names differ by more than case
    assert models.get_entry("m") == first

    renamed = tmp_path / "other.safetensors"
    from MedDDPMSynthLib import read_state_dict, save_safetensors

    save_safetensors(renamed, read_state_dict(TINY)[0])
    second = models.import_model(renamed, name="m", grid_xyz=(64, 64, 32), overwrite=True)
    assert second["grid_xyz"] == [64, 64, 32] and second["file"] == "m.safetensors"
    assert second["sha256"] == sha256(renamed) != first["sha256"]
    assert [e["name"] for e in models.list_models()] == ["demo", "m"]
    assert sorted(p.name for p in (home / "models").iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("name", ["", "demo", "DEMO", "-x", ".hidden", "a b", "a/b", "../x", "x" * 65, "é"])
def test_invalid_names_refused(home, source, name):
    with pytest.raises(InputError, match="name"):
        models.import_model(source, name=name)
    assert snapshot(home) == ([], None)


def test_valid_unusual_names(home, source):
    for name in ("A", "model_128.pt", "x-1.2_b", "9" * 64):
        assert models.import_model(source, name=name)["name"] == name
    assert models.resolve_model("model_128.pt") == home / "models" / "model_128.pt.pt"


def test_grid_and_spacing_validation(home, source):
    with pytest.raises(InputError, match="multiple of 2"):
        models.import_model(source, grid_xyz=(64, 64, 63))
    for bad in [64, (64, 64), (64, 64, 0), (64, -2, 64), (64.0, 64, 64), "64,64,64", (True, 2, 2)]:
        with pytest.raises(InputError, match="three positive whole numbers"):
            models.import_model(source, grid_xyz=bad)
    for bad in [(1, 1), (1, 0, 1), (1, float("nan"), 1)]:
        with pytest.raises(InputError, match="spacing"):
            models.import_model(source, spacing_mm=bad)
    assert snapshot(home) == ([], None)
    entry = models.import_model(source, grid_xyz=[32, 48, 16], spacing_mm=(2, 2, 3.5))
    assert entry["grid_xyz"] == [32, 48, 16] and entry["spacing_mm"] == [2.0, 2.0, 3.5]


def test_safetensors_metadata_gives_the_default_grid(home, tmp_path):
    from MedDDPMSynthLib import read_state_dict, save_safetensors

    path = tmp_path / "meta.safetensors"
    save_safetensors(path, read_state_dict(TINY)[0], {"grid_xyz": "16,32,8", "spacing_mm": "3,3,2"})
    entry = models.import_model(path)
    assert entry["grid_xyz"] == [16, 32, 8] and entry["spacing_mm"] == [3.0, 3.0, 2.0]
    assert entry["container"] == "safetensors" and entry["file"] == "meta.safetensors"


def test_known_release_fills_known_as_and_grid(home, source, monkeypatch):
    release = {"name": "model_128.pt", "family": "whole_head", "grid_xyz": [64, 64, 64], "spacing_mm": [2, 2, 2]}
    monkeypatch.setitem(models.KNOWN_RELEASES, sha256(TINY), release)
    entry = models.import_model(source)
    assert entry["known_as"] == "model_128.pt" and entry["grid_xyz"] == [64, 64, 64]


def test_verify_detects_a_changed_file(home, source):
    models.import_model(source, name="m")
    result = models.verify("m")
    assert result["verified"] and result["sha256"] == sha256(TINY)
    assert models.verify("demo")["verified"]
    with (home / "models" / "m.pt").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match="changed or is damaged.*--overwrite"):
        models.verify("m")
    (home / "models" / "m.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        models.verify("m")
    with pytest.raises(CheckpointError, match="missing"):
        models.resolve_model("m")
    assert models.info("m")["file_exists"] is False


def test_remove_deletes_file_and_entry_and_demo_stays(home, source):
    models.import_model(source, name="m")
    models.import_model(source, name="n")
    removed = models.remove("m")
    assert removed["name"] == "m"
    assert not (home / "models" / "m.pt").exists() and (home / "models" / "n.pt").exists()
    assert [e["name"] for e in models.list_models()] == ["demo", "n"]
    with pytest.raises(InputError, match="no model named 'm'"):
        models.remove("m")
    with pytest.raises(InputError, match="cannot be removed"):
        models.remove("demo")
    assert models.demo_model_path().is_file()


def test_info_reports_path_and_existence(home, source):
    models.import_model(source, name="m")
    entry = models.info("m")
    assert entry["path"] == str(home / "models" / "m.pt") and entry["file_exists"] is True
    demo = models.info("demo")
    assert demo["file_exists"] is True and demo["path"] == str(models.demo_model_path())


def _malicious_pickle(path: Path, marker: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"echo hacked > {marker}",))

    path.write_bytes(pickle.dumps(Exploit()))


@pytest.mark.parametrize("kind", ["text", "truncated", "malicious", "missing", "empty"])
def test_bad_files_are_refused_and_leave_nothing_behind(home, source, tmp_path, kind):
    models.import_model(source, name="kept")
    before = snapshot(home)
    bad, marker = tmp_path / f"bad_{kind}.pt", tmp_path / "HACKED"
    if kind == "text":
        bad.write_text("these are not the weights you are looking for\n")
    elif kind == "truncated":
        bad.write_bytes(TINY.read_bytes()[:1000])
    elif kind == "malicious":
        _malicious_pickle(bad, marker)
    elif kind == "empty":
        bad.write_bytes(b"")
    original = bad.read_bytes() if bad.exists() else None

    expected = {"text": "not a PyTorch checkpoint", "truncated": "truncated or corrupt",
                "malicious": "run code", "missing": "not found", "empty": "empty"}[kind]
    with pytest.raises(CheckpointError, match=expected):
        models.import_model(bad)
    assert not marker.exists()
    assert snapshot(home) == before
    assert (bad.read_bytes() if bad.exists() else None) == original


def test_failed_catalogue_write_restores_the_previous_model(home, source, tmp_path, monkeypatch):
    models.import_model(source, name="m")
    before = snapshot(home)

    def refuse(entries):
        raise OutputError("disk full (simulated)")

    monkeypatch.setattr(models, "_write_catalogue", refuse)
    other = tmp_path / "other.pt"
    other.write_bytes(TINY.read_bytes())
    with open(other, "ab") as handle:  # a different file that still loads (trailing bytes after the zip)
        handle.write(b"\0" * 16)
    with pytest.raises(OutputError, match="simulated"):
        models.import_model(other, name="m", overwrite=True)
    with pytest.raises(OutputError, match="simulated"):
        models.import_model(source, name="fresh")
    assert snapshot(home) == before
    assert (home / "models" / "m.pt").read_bytes() == TINY.read_bytes()


def test_damaged_catalogue_is_a_clear_error_and_is_not_overwritten(home, source):
    home.mkdir()
    catalogue = home / "models.json"
    escape = '{"version": 1, "models": [{"name": "x", "file": "../../etc/passwd"}]}'
    for content in ('{"version": 1, "models": [', "[1, 2]", escape):
        catalogue.write_text(content)
        for action in (models.list_models, lambda: models.import_model(source), lambda: models.resolve_model("x")):
            with pytest.raises(models.CatalogueError, match="models.json is damaged.*delete it") as error:
                action()
            assert isinstance(error.value, MedDDPMError) and str(catalogue) in str(error.value)
        assert catalogue.read_text() == content
    assert not (home / "models").exists()
    catalogue.write_text('{"version": 7, "models": []}')
    with pytest.raises(models.CatalogueError, match="newer MedDDPMSynth"):
        models.list_models()


def test_home_defaults_to_the_user_data_folder(monkeypatch):
    import platformdirs

    monkeypatch.delenv("MEDDDPMSYNTH_HOME", raising=False)
    assert models.data_home() == Path(platformdirs.user_data_dir("MedDDPMSynth", appauthor=False))
    assert models.catalogue_path() == models.data_home() / "models.json"


# --- command line ----------------------------------------------------------------------------------


def test_cli_list_shows_the_demo_model(home, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAME", "FAMILY", "GRID"]
    assert out.splitlines()[1].startswith("demo ") and "whole_head" in out
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "demo"


def test_cli_import_info_verify_remove(home, source, capsys):
    assert main(["models", "import", str(source), "--name", "cli", "--grid", "64,64,32", "--spacing", "2,2,4"]) == 0
    assert "imported 'cli'" in capsys.readouterr().out
    assert main(["models", "info", "cli", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["grid_xyz"] == [64, 64, 32] and entry["spacing_mm"] == [2.0, 2.0, 4.0] and entry["file_exists"]
    assert main(["models", "info", "cli"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("sha256:") for line in lines)
    # one column for the values, after the longest key ("normalisation:" has its space too)
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1 and all(": " in line for line in lines)
    assert main(["models", "verify", "cli"]) == 0
    assert capsys.readouterr().out.startswith("ok: 'cli'")
    assert main(["models", "remove", "cli"]) == 0
    assert not (home / "models" / "cli.pt").exists()


@pytest.mark.parametrize("argv,expected", [
    (["models", "info", "nope"], "no model named 'nope'"),
    (["models", "remove", "demo"], "cannot be removed"),
    (["models", "import", "NOFILE"], "not found"),
    (["models", "import", str(TINY), "--grid", "64,64"], "--grid"),
    (["models", "import", str(TINY), "--spacing", "a,b,c"], "--spacing"),
])
def test_cli_errors_are_one_line_on_stderr(home, capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in captured.err


def test_export_writes_fp16_ema_with_its_grid_and_samples_like_the_source(tmp_path, source):
    import numpy as np
    import torch
    from safetensors import safe_open

    from MedDDPMSynthLib import SamplerSettings, load_model

    out = tmp_path / "out" / "tiny.safetensors"
    before = sha256(source)
    assert main(["models", "export", str(source), "-o", str(out), "--grid", "32,32,32", "--spacing", "6,6,6"]) == 0
    assert sha256(source) == before  # the source is only read
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["grid_xyz"] == "32,32,32" and handle.metadata()["spacing_mm"] == "6,6,6"
        dtypes = {k: handle.get_tensor(k).dtype for k in handle.keys()}
    assert dtypes["denoise_fn.out.2.weight"] == torch.float16 and dtypes["betas"] == torch.float32
    assert out.stat().st_size < source.stat().st_size / 1.5  # EMA only, half precision

    exported, original = load_model(out), load_model(source)
    assert exported.grid_xyz == (32, 32, 32) and exported.spacing_mm == (6.0, 6.0, 6.0)
    labels = np.zeros((32, 32, 32), np.int64)
    labels[8:24, 8:24, 8:24], labels[14:18, 14:18, 14:18] = 1, 2
    fast = SamplerSettings("ddim", 3)
    a, b = exported.generate(labels, seed=1, sampler=fast), original.generate(labels, seed=1, sampler=fast)
    diff = np.abs(a - b)  # fp16 rounding of the weights, nothing more (the random model saturates a few voxels)
    assert diff.max() > 0 and diff.mean() < 0.01 and (diff > 0.05).mean() < 0.01


def test_export_records_the_preview_the_file_recommends_and_every_front_samples_with_it(tmp_path, home, source, capsys):
    """--preview writes the recommendation into the file; models info shows it, a run without sampler options
    takes it (its line says so), and re-exporting the file keeps it."""
    from MedDDPMSynthLib import SamplerSettings, load_model
    from MedDDPMSynthLib.model.presets import choose_sampler

    out = tmp_path / "rec.safetensors"
    assert main(["models", "export", str(source), "-o", str(out), "--grid", "32,32,32", "--spacing", "6,6,6",
                 "--preview", "ddim:4:uniform:fp32:1"]) == 0
    model = load_model(out)
    choice = choose_sampler("cpu", model.timesteps, metadata=model.info.metadata)
    assert choice.settings == SamplerSettings("ddim", 4, 1.0, "uniform", "fp32") and "eta 1" in choice.line()
    assert main(["models", "import", str(out), "--name", "rec"]) == 0
    capsys.readouterr()
    assert main(["models", "info", "rec", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preview"] == "ddim:4:uniform:fp32:1"
    again = tmp_path / "again.safetensors"
    assert main(["models", "export", str(out), "-o", str(again)]) == 0
    assert load_model(again).info.metadata["preview_eta"] == "1"
    assert main(["models", "import", str(source), "--name", "plain"]) == 0
    capsys.readouterr()
    assert main(["models", "info", "plain"]) == 0
    assert "none recommended: the built-in" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    assert main(["models", "export", str(source), "-o", str(bad), "--grid", "32,32,32", "--spacing", "6,6,6",
                 "--preview", "ddim:40"]) == 2  # more steps than the model's T = 10
    assert "between 1 and 10" in capsys.readouterr().err and not bad.exists()


def test_export_refusals_leave_nothing_behind(tmp_path, source, capsys):
    out = tmp_path / "tiny.safetensors"
    assert main(["models", "export", str(source), "-o", str(out)]) == 2  # the tiny checkpoint has no run config
    assert "--grid" in capsys.readouterr().err and not out.exists()
    assert main(["models", "export", str(source), "-o", str(tmp_path / "x.pt"), "--grid", "32,32,32",
                 "--spacing", "6,6,6"]) == 2
    out.write_bytes(b"keep me")
    assert main(["models", "export", str(source), "-o", str(out), "--grid", "32,32,32", "--spacing", "6,6,6"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["models", "export", str(source), "-o", str(out), "--grid", "30,32,32", "--spacing", "6,6,6"]) == 2
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["src", "tiny.safetensors"]


def test_a_training_runs_checkpoint_carries_the_runs_grid(tmp_path, home):
    """model-last.pt of 'medddpm-synth train' has no grid inside: it comes from the run's config.json."""
    from MedDDPMSynthLib import load_model

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(TINY, run / "model-last.pt")
    (run / "config.json").write_text(json.dumps({"config": {"grid_xyz": [32, 32, 16], "spacing_mm": [6, 6, 4.5]}}))
    model = load_model(run / "model-last.pt")
    assert model.grid_xyz == (32, 32, 16) and model.spacing_mm == (6.0, 6.0, 4.5)
    assert models.import_model(run / "model-last.pt", name="run")["grid_xyz"] == [32, 32, 16]
    assert main(["models", "export", str(run / "model-last.pt"), "-o", str(tmp_path / "run.safetensors")]) == 0
    assert load_model(tmp_path / "run.safetensors").spacing_mm == (6.0, 6.0, 4.5)
    assert load_model(TINY).grid_xyz == (128, 128, 128)  # no run beside it: the family's grid
