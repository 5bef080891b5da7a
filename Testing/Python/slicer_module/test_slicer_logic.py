"""The Slicer module's scene logic on a real vtkMRMLScene (slicer-core wheel): segmentation -> labels ->
engine (background process, tiny model) -> volume nodes on the mask's exact grid; tumour edits with undo;
local re-generation; nnU-Net export; cancel and bad input leave the scene as it was."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_scene_helpers import NAMES, add_segmentation, fast, matrix, new_scene, standard_head, tumour_centroid_ras

from MedDDPMSynthLib.errors import GenerationCancelled, InputError, MedDDPMError, OutputError
from MedDDPMSynthSlicerLib import EngineFailure, SceneLogic
from MedDDPMSynthSlicerLib.scene_io import update_node_from_array
from MedDDPMSynthSlicerLib.scene_io import array_from_node, ijk_to_ras, image_from_node, ras_matrix_of

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

TOL = 1e-4


@pytest.mark.parametrize("kind", ["LPS", "RAS", "oblique"])
def test_segmentation_to_labels_keeps_the_grid(kind):
    scene = new_scene()
    labels = standard_head()
    segmentation, reference = add_segmentation(scene, labels, matrix(kind), NAMES)
    before = scene.GetNumberOfNodes()
    logic = SceneLogic(scene)
    for ref in (reference, None):  # a chosen reference volume, or the segmentation's own geometry
        array, m = logic.label_array(segmentation, ref)
        np.testing.assert_array_equal(array, labels.transpose(2, 1, 0))
        np.testing.assert_allclose(m, matrix(kind), atol=TOL)
    assert scene.GetNumberOfNodes() == before  # temporary labelmaps are gone
    # RAS -> LPS: Slicer's own NIfTI reader gives back the matrix of the image the engine gets
    export = logic.label_map(segmentation)
    np.testing.assert_allclose(ras_matrix_of(export.image), matrix(kind), atol=TOL)


@pytest.mark.parametrize("kind", ["LPS", "RAS", "oblique"])
def test_generate_gives_volumes_on_the_masks_grid(kind, model_home, tmp_path):
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix(kind), NAMES, keep_reference=False)
    before = scene.GetNumberOfNodes()
    logic = SceneLogic(scene, temp_dir=tmp_path)
    steps = []
    samples = 2 if kind == "RAS" else 1
    nodes = logic.generate(segmentation, fast(seed=3, samples=samples), progress=lambda d, t: steps.append((d, t)))
    total = 2 * samples
    assert steps == [(d, total) for d in range(1, total + 1)]  # the engine's PROGRESS lines, read live
    assert len(nodes) == samples and all(n.IsA("vtkMRMLScalarVolumeNode") for n in nodes)
    for n, node in enumerate(nodes):
        np.testing.assert_allclose(ijk_to_ras(node), matrix(kind), atol=TOL)
        assert node.GetImageData().GetDimensions() == (40, 40, 30)
        assert node.GetName() == f"Segmentation T1C seed {3 + n}" and node.GetAttribute("MedDDPMSynth.seed") == str(3 + n)
        assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
        voxels = array_from_node(node)
        assert voxels.dtype == np.float32 and 0.0 <= voxels.min() and voxels.max() <= 1.0 and voxels.std() > 0
    node = nodes[0]
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == node.GetID()
    if samples == 2:
        assert not np.array_equal(array_from_node(nodes[0]), array_from_node(nodes[1]))  # seeds 3 and 4
    assert scene.GetNumberOfNodes() == before + 2 * samples  # volumes and their display nodes, nothing else
    assert list(tmp_path.iterdir()) == []  # the job's files are gone
    provenance = json.loads(node.GetAttribute("MedDDPMSynth.provenance"))
    assert provenance["seeds"] == [3 + n for n in range(samples)] and provenance["sampler"]["name"] == "ddim"


@pytest.fixture(scope="module")
def generated(model_home, tmp_path_factory):
    """An LPS scene with one generated volume (shared by the export and re-generation tests)."""
    scene = new_scene()
    segmentation, reference = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path_factory.mktemp("jobs"))
    nodes = logic.generate(segmentation, fast(harmonize=1))
    return scene, logic, segmentation, reference, nodes


def test_shift_scale_rotate_remove_with_undo():
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene)
    before = scene.GetNumberOfNodes()
    original, m = logic.label_array(segmentation)

    record = logic.shift_tumour(segmentation, [8.0, 0.0, -4.0])  # RAS mm: 2 voxels right, 1 inferior
    shifted, _ = logic.label_array(segmentation)
    np.testing.assert_allclose(tumour_centroid_ras(shifted, m) - tumour_centroid_ras(original, m), [8, 0, -4],
                               atol=1e-6)
    assert (shifted == 2).sum() == (original == 2).sum() and record["clipped_voxels"] == 0
    assert ((shifted > 0) == (original > 0)).all()  # the head outline never changes

    logic.scale_tumour(segmentation, 1.5)
    scaled, _ = logic.label_array(segmentation)
    assert 2.8 < (scaled == 2).sum() / (shifted == 2).sum() < 4.0  # ~1.5^3
    np.testing.assert_allclose(tumour_centroid_ras(scaled, m), tumour_centroid_ras(shifted, m), atol=2.0)  # half a voxel

    logic.rotate_tumour(segmentation, [0, 0, 90])
    rotated, _ = logic.label_array(segmentation)
    logic.remove_tumour(segmentation)
    removed, _ = logic.label_array(segmentation)
    assert not (removed == 2).any() and ((removed == 1) == (original > 0)).all()
    tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Tumour")
    assert tumour  # the segment stays (empty), so the mapping still holds

    for expected in (rotated, scaled, shifted, original):  # remove, rotate, scale, shift undone in turn
        assert logic.undo_tumour_edit(segmentation)
        np.testing.assert_array_equal(logic.label_array(segmentation)[0], expected)
    assert not logic.undo_tumour_edit(segmentation)
    assert scene.GetNumberOfNodes() == before


def test_shift_in_an_oblique_grid_moves_by_the_ras_vector():
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("oblique"), NAMES)
    logic = SceneLogic(scene)
    original, m = logic.label_array(segmentation)
    logic.shift_tumour(segmentation, [0.0, 10.0, 0.0])  # 10 mm anterior, not along a grid axis
    moved = tumour_centroid_ras(logic.label_array(segmentation)[0], m) - tumour_centroid_ras(original, m)
    np.testing.assert_allclose(moved, [0, 10, 0], atol=2.0)  # nearest neighbour on 4 mm voxels: half a voxel


def test_export_reloads_with_identical_geometry(generated, tmp_path):
    scene, logic, segmentation, reference, nodes = generated
    before = scene.GetNumberOfNodes()
    files = logic.export_training_pair(nodes, segmentation, tmp_path / "Dataset501_Synth", case_id="case 1")
    names = sorted(str(p.relative_to(tmp_path / "Dataset501_Synth")) for p in files)
    assert names == ["dataset.json", "imagesTr/case_1_0000.nii.gz", "labelsTr/case_1.nii.gz",
                     "provenance/case_1.json"]
    image = sitk.ReadImage(str(tmp_path / "Dataset501_Synth/imagesTr/case_1_0000.nii.gz"))
    label = sitk.ReadImage(str(tmp_path / "Dataset501_Synth/labelsTr/case_1.nii.gz"))
    for reloaded in (image, label):
        np.testing.assert_allclose(ras_matrix_of(reloaded), ijk_to_ras(nodes[0]), atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(image_from_node(nodes[0])))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), logic.label_array(segmentation)[0])
    # Slicer's own reader (RAS) agrees with the LPS files
    check = new_scene()
    volume = check.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = check.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "Dataset501_Synth/labelsTr/case_1.nii.gz"))
    assert storage.ReadData(volume)
    np.testing.assert_allclose(ijk_to_ras(volume), ijk_to_ras(nodes[0]), atol=TOL)
    dataset = json.loads((tmp_path / "Dataset501_Synth/dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1c"} and dataset["labels"] == {"background": 0, "head": 1, "tumor": 2}
    assert dataset["numTraining"] == 1 and dataset["file_ending"] == ".nii.gz"
    provenance = json.loads((tmp_path / "Dataset501_Synth/provenance/case_1.json").read_text())
    assert provenance["images"][0]["model"] == "tiny16" and provenance["images"][0]["engine_provenance"]["seeds"] == [0]
    with pytest.raises(OutputError, match="already exists"):
        logic.export_training_pair(nodes, segmentation, tmp_path / "Dataset501_Synth", case_id="case 1")
    logic.export_training_pair(nodes, segmentation, tmp_path / "Dataset501_Synth", case_id="case2")
    assert json.loads((tmp_path / "Dataset501_Synth/dataset.json").read_text())["numTraining"] == 2
    assert scene.GetNumberOfNodes() == before


def test_export_into_a_folder_made_by_the_dataset_command(generated, tmp_path):
    """One nnU-Net writer: a Slicer export adds its case to a dataset folder that 'medddpm-synth dataset' made
    (both write the family's channel names; before, T1c vs t1c made the export refuse the folder)."""
    from MedDDPMSynthLib.cli.commands import main

    scene, logic, segmentation, reference, nodes = generated
    masks = tmp_path / "masks"
    masks.mkdir()
    sitk.WriteImage(logic.label_map(segmentation).image, str(masks / "head.nii.gz"))
    folder = tmp_path / "Dataset502_Synth"
    assert main(["dataset", "--masks", str(masks), "-o", str(folder), "--model", "tiny16", "--sampler", "ddim",
                 "--steps", "2", "--device", "cpu", "--quiet"]) == 0
    made = json.loads((folder / "dataset.json").read_text())
    files = logic.export_training_pair(nodes, segmentation, folder, case_id="from_slicer")
    assert folder / "imagesTr/from_slicer_0000.nii.gz" in files
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == made["channel_names"] == {"0": "T1c"}
    assert dataset["labels"] == made["labels"] and dataset["numTraining"] == made["numTraining"] + 1


def test_regenerate_locally_keeps_the_outside(generated):
    scene, logic, segmentation, reference, nodes = generated
    before = scene.GetNumberOfNodes()
    previous = image_from_node(nodes[0])
    logic.shift_tumour(segmentation, [-8.0, 0.0, 0.0])
    updated = logic.regenerate(segmentation)
    assert [n.GetID() for n in updated] == [nodes[0].GetID()]  # updated in place
    after = sitk.GetArrayFromImage(image_from_node(nodes[0]))
    labels, m = logic.label_array(segmentation)
    np.testing.assert_allclose(ijk_to_ras(nodes[0]), m, atol=TOL)
    far = np.ones(labels.shape, bool)
    zz, yy, xx = np.nonzero(labels == 2)
    far[max(zz.min() - 8, 0):zz.max() + 9, max(yy.min() - 8, 0):yy.max() + 9, max(xx.min() - 10, 0):xx.max() + 11] = False
    np.testing.assert_array_equal(after[far], sitk.GetArrayFromImage(previous)[far])  # bit for bit
    assert not np.array_equal(after[~far], sitk.GetArrayFromImage(previous)[~far])
    assert scene.GetNumberOfNodes() == before
    logic.undo_tumour_edit(segmentation)


def test_cancel_kills_the_engine_and_leaves_nothing(model_home, tmp_path):
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("RAS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    before = scene.GetNumberOfNodes()
    job = logic.start_generation(segmentation, fast(steps=10, samples=4))
    deadline = time.monotonic() + 600  # waits for the event (2 steps done); the deadline only catches a hang
    while job.running and job.engine.done < 2 and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.running and job.engine.done >= 2 and job.engine.total == 40, "no 2 sampling steps in 600 s"
    assert 0 < job.fraction() < 1 and job.eta_seconds() > 0  # what the progress bar shows
    started = time.monotonic()
    logic.cancel_generation(job)
    # killed, not waited for: the 38 steps left take many seconds; 5 s leaves room for a busy machine's kill + reap
    assert time.monotonic() - started < 5.0
    with pytest.raises(ProcessLookupError):
        os.kill(job.engine.pid, 0)
    with pytest.raises(GenerationCancelled):
        logic.finish_generation(job)
    assert scene.GetNumberOfNodes() == before and list(tmp_path.iterdir()) == []


def test_engine_refusal_is_one_clear_message(model_home, tmp_path):
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    before = scene.GetNumberOfNodes()
    with pytest.raises(EngineFailure) as failure:
        logic.generate(segmentation, fast(steps=50))  # the tiny model has T = 10
    assert str(failure.value) == "--steps must be between 1 and 10 (the model's T), got 50"
    assert scene.GetNumberOfNodes() == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, names, message", [
    (np.zeros((40, 40, 30), np.uint8), NAMES, "has no segments; paint the head and the tumour"),
    (standard_head(), {1: "Segment_1", 2: "Tumour"}, "'Segment_1' name no tissue of the whole_head model; rename"),
    (standard_head(), {1: "Tumour", 2: "tumor"}, "has no head segment; add a segment named 'head'"),
    (np.where(standard_head() == 2, 3, standard_head()), {1: "head", 3: "tumour"}, None),
])
def test_bad_segmentation_gives_a_clear_error(labels, names, message, tmp_path):
    scene = new_scene()
    if message is None:  # a tumour floating outside the head: the engine's anatomy check
        labels = standard_head()
        labels[labels == 2] = 1
        labels[1:4, 1:4, 1:4] = 3
        message = "1 tumour region(s) (27 voxels) lie outside the head"
    segmentation, _ = add_segmentation(scene, labels, matrix("oblique"), names)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        logic.start_generation(segmentation, fast())
    assert scene.GetNumberOfNodes() == before and list(tmp_path.iterdir()) == []


def test_tumour_tools_refuse_a_segmentation_without_tumour():
    scene = new_scene()
    labels = standard_head()
    labels[labels == 2] = 1
    segmentation, _ = add_segmentation(scene, labels, matrix("LPS"), {1: "head"})
    with pytest.raises(InputError, match="has no tumour segment to edit; add a segment named 'tumour'"):
        SceneLogic(scene).shift_tumour(segmentation, [5, 0, 0])
    segmentation.GetSegmentation().AddEmptySegment("", "tumour")
    with pytest.raises(InputError, match="the map has no tumour voxels to edit; add a tumour first"):
        SceneLogic(scene).scale_tumour(segmentation, 2.0)
    second, _ = add_segmentation(scene, labels * 2, matrix("LPS"), {2: "tumour"}, name="Second")
    second.GetSegmentation().AddEmptySegment("", "head")
    with pytest.raises(InputError, match="segment 'head' \\(head\\) is empty in the reference geometry; paint it"):
        SceneLogic(scene).shift_tumour(second, [5, 0, 0])


def test_explicit_mapping_by_segment_name():
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("RAS"), {1: "Skin and all", 2: "lesion"})
    logic = SceneLogic(scene)
    array, _ = logic.label_array(segmentation, mapping={"head": "Skin and all", "tumour": ["lesion"]})
    np.testing.assert_array_equal(array, standard_head().transpose(2, 1, 0))
    with pytest.raises(InputError, match="has no segment 'nope'; choose one of 'Skin and all', 'lesion'"):
        logic.label_array(segmentation, mapping={"head": "nope"})
    partial, _ = add_segmentation(scene, standard_head(), matrix("RAS"), {1: "Skin and all", 2: "Tumour"}, name="P")
    array, _ = logic.label_array(partial, mapping={"head": "Skin and all"})  # the tumour still by its name
    np.testing.assert_array_equal(array, standard_head().transpose(2, 1, 0))


def test_segments_of_a_label_file_are_named_by_their_values():
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("RAS"), {1: "Label_1", 2: "Label_2"})
    logic = SceneLogic(scene)
    with pytest.raises(InputError, match="'Label_1', 'Label_2' name no tissue"):
        logic.label_array(segmentation)
    assert logic.name_segments_by_label(segmentation) == 2
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], standard_head().transpose(2, 1, 0))


def test_reference_volume_sets_the_grid():
    """Labels come out on a chosen reference volume's grid (Slicer's own export does the resampling)."""
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("RAS"), NAMES)
    coarse = matrix("oblique", spacing=8.0)
    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "coarse")
    update_node_from_array(reference, np.zeros((15, 20, 20), np.float32), coarse)
    array, m = SceneLogic(scene).label_array(segmentation, reference)
    assert array.shape == (15, 20, 20)
    np.testing.assert_allclose(m, coarse, atol=TOL)
    assert set(np.unique(array).tolist()) == {0, 1, 2}


def test_brats_mapping_paints_the_inner_layers_last():
    """BraTS: brain 4, oedema 2, enhancing 3, necrotic 1; overlapping segments keep the inner layer."""
    scene = new_scene()
    labels = standard_head(tumour_radius_mm=20.0)
    centre = np.argwhere(labels == 2).mean(0)
    distance = np.linalg.norm((np.indices(labels.shape).transpose(1, 2, 3, 0) - centre) * 4.0, axis=-1)
    brats = np.where(labels > 0, 4, 0)
    brats[(labels == 2)] = 2
    brats[(labels == 2) & (distance <= 12)] = 3
    brats[(labels == 2) & (distance <= 6)] = 1
    names = {4: "Brain", 2: "oedema", 3: "ET", 1: "necrotic core"}
    segmentation, _ = add_segmentation(scene, brats, matrix("LPS"), names)
    logic = SceneLogic(scene)
    array, _ = logic.label_array(segmentation, family="brats")
    np.testing.assert_array_equal(array, brats.transpose(2, 1, 0))
    record = logic.shift_tumour(segmentation, [0, 0, 4.0], family="brats")
    assert record["family"] == "brats" and record["clipped_voxels"] == 0
    shifted, _ = logic.label_array(segmentation, family="brats")
    np.testing.assert_array_equal(shifted > 0, array > 0)  # the brain outline never changes
    for value in (1, 2, 3):  # each layer moved one voxel superior (k + 1), nothing lost
        np.testing.assert_array_equal(np.argwhere(shifted == value).mean(0), np.argwhere(array == value).mean(0) + [1, 0, 0])
    whole_head, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES, name="whole head")
    with pytest.raises(InputError, match="'Tumour' name no tissue of the brats model; rename the segments to brain, "
                                         "oedema, enhancing, necrotic"):
        logic.label_array(whole_head, family="brats")


def test_a_failure_while_loading_results_adds_no_node(model_home, tmp_path, monkeypatch):
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    before = scene.GetNumberOfNodes()
    read = SceneLogic._read_output
    calls = []

    def second_fails(self, job, path):
        calls.append(path.name)
        if len(calls) == 2:
            raise MedDDPMError(f"cannot read {path.name}")
        return read(self, job, path)

    monkeypatch.setattr(SceneLogic, "_read_output", second_fails)
    with pytest.raises(MedDDPMError, match="cannot read mask_s01_t1c.nii.gz"):
        logic.generate(segmentation, fast(samples=2))
    assert scene.GetNumberOfNodes() == before and list(tmp_path.iterdir()) == []


def test_every_front_shows_the_same_time_left():
    from MedDDPMSynthSlicerLib.jobs import duration_text

    assert [duration_text(s) for s in (None, 0.4, 40.4, 59.6, 125)] == ["", "0 s", "40 s", "1 min 00 s", "2 min 05 s"]


def test_a_models_own_preview_is_what_every_front_runs_and_changes(model_home, tmp_path):
    """A model file that recommends its preview (models export --preview): the scene logic's Preview is that
    sampler, a steps value given on top changes that sampler's steps (not the built-in preview's), and the
    engine is asked for the preset by name when nothing is changed."""
    from conftest import OFFICIAL
    from MedDDPMSynthLib.store.models import export_model, import_model
    from MedDDPMSynthLib.model.presets import parse_sampler_spec

    exported = tmp_path / "recommends.safetensors"
    export_model(OFFICIAL / "tiny_wholehead_ckpt.pt", exported, grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0),
                 preview=parse_sampler_spec("ddim:4:uniform:fp32:1"))
    import_model(exported, name="recommends")
    logic = SceneLogic(new_scene())
    assert logic.model_preview("recommends") == "ddim:4:uniform:fp32:1" and logic.model_preview("tiny16") is None
    preview = logic.settings_for("recommends", "Preview")
    assert (preview.sampler, preview.steps, preview.eta) == ("ddim", 4, 1.0)
    assert preview.arguments()[-2:] == ["--sampler", "preview"]
    fewer = logic.settings_for("recommends", "Preview", steps=3)
    assert (fewer.sampler, fewer.steps, fewer.eta, fewer.spacing, fewer.engine_preset) == ("ddim", 3, 1.0, "uniform", None)
