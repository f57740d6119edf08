"""The bootstrap loop (training.bootstrap): label choice, pseudo-labels, promotion and rejection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.model.bundle import load_bundle, read_bundle_info
from napari_gitseg.model.registry import ModelRegistry
from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.project import Project
from training.bootstrap import (
    choose_labelled,
    run_bootstrap,
    run_round_from_store,
    select_pseudo,
)
from training.bootstrap_plots import plot_effort_curve
from training.config import preset
from training.pseudo_labels import with_pseudo

torch.set_num_threads(2)

TINY = {
    "epochs": 1,
    "max_steps_per_epoch": 2,
    "batch_size": 4,
    "size": [64, 64],
    "val_batch_size": 8,
    "finetune_lr_factor": 1.0,
}
# fine-tuning that cannot change the model: lr 0 and BatchNorm statistics frozen (as configured here,
# not the few-label recipe's rate)
FROZEN = {"finetune_lr_factor": 0.0, "freeze_bn": True, "few_label_recipe": False}


@pytest.fixture(scope="module")
def cases():
    """Three tiny phantom cases (16 slices, 64 x 64)."""
    return [make_phantom_case(0, case=c, n_slices=16, size=(64, 64)) for c in (1, 2, 3)]


# ---------------------------------------------------------------------------------------- helpers
def test_choose_labelled_spreads_over_cases_and_slices(cases):
    chosen = choose_labelled(cases, 9)
    assert sum(len(v) for v in chosen.values()) == 9
    assert {k: len(v) for k, v in chosen.items()} == {"case1_day0": 3, "case2_day0": 3, "case3_day0": 3}
    assert chosen["case1_day0"] == [2, 8, 13]  # evenly spaced along z
    assert sum(len(v) for v in choose_labelled(cases, 1000).values()) == 48  # capped at what exists
    with pytest.raises(ValueError):
        choose_labelled(cases, 0)


def test_select_pseudo_keeps_the_most_confident_and_few_empty():
    cands = [("a", 0.9, True), ("b", 0.8, False), ("c", 0.95, True), ("d", 0.5, False), ("e", 0.7, False)]
    assert select_pseudo(cands, 3, max_empty_fraction=0.34) == ["c", "b", "e"]  # one empty slice at most
    assert select_pseudo(cands, 3, max_empty_fraction=1.0) == ["c", "a", "b"]
    assert select_pseudo(cands, 0) == []
    assert select_pseudo(cands, 10, max_empty_fraction=0.0) == ["b", "e", "d"]


def test_pseudo_labels_never_replace_clinician_labels(cases):
    stack = cases[0]
    lab = np.zeros(16, bool)
    lab[[3, 8]] = True
    masks = np.where(lab[None, :, None, None], stack.masks, False)
    clinician = {stack.name: type(stack)(**{**stack.__dict__, "masks": masks, "labelled": lab})}
    pred = ~stack.masks  # a prediction that disagrees everywhere
    stacks, prov = with_pseudo(clinician, {stack.name: (pred, None)}, [(stack.name, 3), (stack.name, 5)])
    out = stacks[0]
    assert prov[stack.name] == {3: "clinician", 8: "clinician", 5: "pseudo"}
    assert np.array_equal(out.masks[:, 3], stack.masks[:, 3])  # the clinician's, not the prediction
    assert np.array_equal(out.masks[:, 5], pred[:, 5])
    assert out.labelled.tolist() == [z in (3, 5, 8) for z in range(16)]


# ---------------------------------------------------------------------------------------- simulation
@pytest.mark.slow
def test_bootstrap_promotes_a_better_model(cases, tmp_path):
    cfg = preset("quick", **{**TINY, "lr": 1e-2}, finetune_epochs=8)  # round 1 trains longer than round 0
    events: list = []
    report = run_bootstrap(cases, labels=8, rounds=1, keep=6, out=tmp_path, config=cfg, on_event=events.append)
    r0, r1 = report["rounds"]
    assert report["val_stacks"] == ["case3_day0"] and report["labels"] == 8
    assert r0["promoted"] and r0["pseudo_labels"] == 0 and r0["trained_on"] == 8
    assert r1["pseudo_labels"] == 6 and r1["trained_on"] == 14
    assert r1["promoted"], report
    assert r1["candidate_dice"] > r0["candidate_dice"]
    registry = ModelRegistry(tmp_path / "models")
    assert [v["version"] for v in registry.versions()] == ["v0001", "v0002"]
    assert registry.active() == "v0002" == report["final_version"]
    assert registry.info().metrics["val_dice"] == pytest.approx(r1["candidate_dice"])
    # round 1 fine-tuned from round 0's model, on clinician + pseudo labels kept apart
    training = read_bundle_info(tmp_path / "rounds" / "round1" / "candidate.json").training
    assert training["init_from"].endswith("v0001.json")
    assert training["data"]["provenance"] == {"clinician": 8, "pseudo": 6}
    promoted = [e for e in events if isinstance(e, ev.Promoted)]
    assert [e.version for e in promoted] == ["v0001", "v0002"] and promoted[1].previous_version == "v0001"
    assert [e.round for e in events if isinstance(e, ev.RoundDone)] == [0, 1]
    fractions = [e.fraction for e in events if isinstance(e, ev.Progress)]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
    saved = json.loads((tmp_path / "bootstrap_report.json").read_text())
    assert saved["rounds"] == report["rounds"]
    assert (tmp_path / "bootstrap_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bootstrap_rejects_a_model_that_is_not_better(cases, tmp_path):
    cfg = preset("quick", **{**TINY, **FROZEN})
    events: list = []
    report = run_bootstrap(cases, labels=8, rounds=1, keep=6, out=tmp_path, config=cfg, on_event=events.append)
    r0, r1 = report["rounds"]
    assert r0["promoted"] and not r1["promoted"]
    assert r1["candidate_dice"] == pytest.approx(r0["candidate_dice"])  # the same weights
    registry = ModelRegistry(tmp_path / "models")
    assert [v["version"] for v in registry.versions()] == ["v0001"]
    assert registry.active() == "v0001" == report["final_version"]
    rejected = [e for e in events if isinstance(e, ev.Rejected)]
    assert len(rejected) == 1 and rejected[0].active_dice == pytest.approx(r0["candidate_dice"])


def test_bootstrap_refuses_data_without_labels(cases, tmp_path):
    empty = [type(s)(**{**s.__dict__, "masks": np.zeros_like(s.masks)}) for s in cases]
    with pytest.raises(GitsegInputError, match="empty masks"):
        run_bootstrap(empty, labels=8, rounds=1, out=tmp_path, config=preset("quick", **TINY))


# ---------------------------------------------------------------------------------------- GUI round
@pytest.fixture
def project(cases, tmp_path, monkeypatch):
    """A project folder: two stacks registered with snapshots and 6 clinician-labelled slices each."""
    monkeypatch.setattr("napari_gitseg.resources.default_model_path", lambda: None)  # start from scratch
    folder = tmp_path / "project"
    with Project(folder).open_store() as store:
        for stack in cases[:2]:
            store.register_stack(
                stack.name, stack.slice_ids, stack.image.shape, stack.spacing, stack.source, stack.classes
            )
            Project(folder).save_snapshot(stack)
            store.save_many(
                [
                    {"slice_id": stack.slice_ids[z], "masks": stack.masks[:, z], "source": "clinician"}
                    for z in (2, 4, 6, 8, 10, 12)
                ]
            )
            store.save_effort(
                "review-1",
                [
                    {
                        "slice_id": stack.slice_ids[z],
                        "seconds": 15.0,
                        "strokes": 2,
                        "painted_px": 50,
                        "accepted_unedited": False,
                    }
                    for z in (2, 4, 6, 8)
                ],
            )
    return folder


@pytest.mark.slow
def test_store_rounds_promote_then_reject(project, cases):
    events: list = []
    first = run_round_from_store(project, preset("quick", **TINY), keep=5, on_event=events.append)
    assert first["promoted"] and first["active_version"] == "v0001" and first["baseline"] is None
    assert first["clinician_train"] + first["clinician_val"] == 12 and first["clinician_val"] > 0
    assert first["pseudo_written"] == 5
    assert first["clinician_minutes"] == pytest.approx(2.0)  # 8 slices x 15 s from the effort log
    assert first["dice_vs_effort"] == [
        {"round": 1, "clinician_minutes": 2.0, "clinician_slices": 12, "dice": first["candidate_dice"]}
    ]
    registry = Project(project).registry()
    assert registry.active() == "v0001"
    with Project(project).open_store() as store:
        clin = set(store.clinician_slices())
        pseudo = store.pseudo_slices()
        assert len(clin) == 12 and len(pseudo) == 5 and not clin & set(pseudo)
        for sid, rec in store.latest_many(sorted(clin)).items():  # clinician work untouched
            z = int(sid.rsplit("_", 1)[1]) - 1
            stack = cases[0] if sid.startswith("case1") else cases[1]
            assert rec.source == "clinician" and np.array_equal(rec.masks, stack.masks[:, z])
    assert isinstance(events[-1], ev.RoundDone) and any(isinstance(e, ev.Promoted) for e in events)

    # a round that cannot improve the model is rejected; the active model stays
    second = run_round_from_store(project, preset("quick", **{**TINY, **FROZEN}), keep=5)
    assert not second["promoted"] and second["baseline"] == "v0001"
    assert second["candidate_dice"] == pytest.approx(second["baseline_dice"])
    assert second["clinician_val"] == first["clinician_val"]  # the same frozen validation slices
    assert second["pseudo_used"] == 5
    assert [p["round"] for p in second["dice_vs_effort"]] == [1, 2]
    assert second["dice_vs_effort"][1]["dice"] == pytest.approx(second["baseline_dice"])  # the active model's
    assert plot_effort_curve(second["dice_vs_effort"], project / "effort.png").stat().st_size > 0
    assert registry.active() == "v0001" and len(registry.versions()) == 1
    load_bundle(registry.path_of("v0001"))
    assert not list(Project(project).jobs_folder.glob("round-*"))  # its work folder is cleaned up


def test_store_round_needs_clinician_labels(tmp_path):
    with Project(tmp_path / "p").open_store():
        pass
    with pytest.raises(GitsegInputError, match="clinician-labelled slice"):
        run_round_from_store(tmp_path / "p", preset("quick", **TINY))
    with pytest.raises(GitsegInputError, match="project folder not found"):
        run_round_from_store(tmp_path / "missing", preset("quick", **TINY))


def test_the_gui_refuses_a_round_the_worker_would_refuse(cases, tmp_path):
    """Issue 32: one clinician label. The Train dock's check (``retrain``) and the worker apply the same
    minimum with the same message, so the GUI never starts a round that the worker then refuses."""
    from napari_gitseg.project import MIN_CLINICIAN_LABELS
    from napari_gitseg.retrain import RetrainError, check_ready, iter_round_events, round_job

    stack, project = cases[0], Project(tmp_path / "p")
    with project.open_store() as store:
        store.register_stack(stack.name, stack.slice_ids, stack.image.shape, stack.spacing, stack.source, stack.classes)
        project.save_snapshot(stack)
        store.save(stack.slice_ids[4], stack.masks[:, 4], source="clinician")
    assert MIN_CLINICIAN_LABELS > 1 == project.clinician_label_count()
    with pytest.raises(GitsegInputError) as worker:
        run_round_from_store(project.folder, preset("quick", **TINY))
    with pytest.raises(RetrainError) as gui:
        check_ready(project.folder)
    assert str(gui.value) in str(worker.value) and f"at least {MIN_CLINICIAN_LABELS} slices" in str(gui.value)
    with pytest.raises(RetrainError, match=str(MIN_CLINICIAN_LABELS)):  # the dock's round: no process
        next(iter_round_events(round_job(project.folder, preset="quick")))
    assert not project.jobs_folder.exists()
    with project.open_store() as store:  # a second label: both sides agree the round may run
        store.save(stack.slice_ids[8], stack.masks[:, 8], source="clinician")
    assert check_ready(project.folder) == MIN_CLINICIAN_LABELS
