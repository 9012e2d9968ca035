"""Run directories, lineage manifests, recipes and `--run-dir` on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.core.config import to_mapping
from assay.core.hashing import hash_path
from assay.core.io import InputError, write_records
from assay.core.runs import Run

REPO = Path(__file__).resolve().parents[1]


def test_stage_records_lineage_and_skips_when_unchanged(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    run = Run(tmp_path / "run")
    calls = []

    def make():
        calls.append(1)
        (run.dir / "out.txt").write_text(src.read_text() * 2)
        return {"rows": 2}

    e = run.stage("double", {"x": 1}, make, inputs=[src], outputs=[run.dir / "out.txt"], models=["m"])
    assert e["status"] == "done" and e["summary"] == {"rows": 2} and e["models"] == ["m"]
    assert e["inputs"][0]["sha256"] == hash_path(src)["sha256"] and e["outputs"][0]["bytes"] == 2
    m = json.loads((run.dir / "manifest.json").read_text())
    assert m["packages"]["torch"] and m["stages"]["double"]["wall_s"] >= 0
    run.stage("double", {"x": 1}, make, inputs=[src], outputs=[run.dir / "out.txt"])
    assert len(calls) == 1  # unchanged: skipped
    Run(tmp_path / "run").stage("double", {"x": 2}, make, inputs=[src], outputs=[run.dir / "out.txt"])
    assert len(calls) == 2  # config changed: rerun
    src.write_text("b")
    run.stage("double", {"x": 2}, make, inputs=[src], outputs=[run.dir / "out.txt"])
    assert len(calls) == 3 and (run.dir / "out.txt").read_text() == "bb"  # input changed: rerun
    (run.dir / "out.txt").write_text("tampered")
    run.stage("double", {"x": 2}, make, inputs=[src], outputs=[run.dir / "out.txt"])
    assert len(calls) == 4  # output changed since: rerun


def test_where_a_stage_ran_is_not_part_of_its_identity(tmp_path):
    """A stage done locally (or before the executor keys existed) is not redone on Ray, nor the reverse."""
    run = Run(tmp_path / "run")
    calls = []

    def make():
        calls.append(1)
        (run.dir / "out.txt").write_text("x")

    out = [run.dir / "out.txt"]
    run.stage("s", {"n": 4, "sub": {"k": 1}}, make, outputs=out)
    run.stage("s", {"n": 4, "executor": "ray", "executor_options": {"workers": 2},
                    "sub": {"k": 1, "executor": "local"}}, make, outputs=out)
    assert len(calls) == 1
    e = run.stage("s", {"n": 5, "executor": "ray"}, make, outputs=out)
    assert len(calls) == 2 and e["config"]["executor"] == "ray"  # recorded, just not hashed


def test_changed_config_clears_stale_outputs_before_rerun(tmp_path):
    run = Run(tmp_path)
    out = tmp_path / "samples.jsonl"

    def append(tag):
        with open(out, "a") as fh:
            fh.write(tag + "\n")
        (tmp_path / "samples.jsonl.config.yaml").write_text(tag)

    run.stage("s", {"n": 1}, lambda: append("a"), outputs=[out])
    run.stage("s", {"n": 2}, lambda: append("b"), outputs=[out])
    # The resumable output was made under n=1: it is removed (with its side files), not appended to.
    assert out.read_text() == "b\n" and (tmp_path / "samples.jsonl.config.yaml").read_text() == "b"


def test_a_redone_stage_deletes_only_the_files_it_wrote(tmp_path):
    run = Run(tmp_path / "run")
    d = run.dir / "dir"
    d.mkdir()
    (d / "sft.py").write_text("user code")
    (d / "sft.txt").write_text("user notes")
    out = d / "sft"  # `assay select --run-dir run --out dir/sft`: <out>.* matches the user's files

    def write(tag):
        out.write_text(tag)
        (d / "sft.funnel.json").write_text(tag)

    run.stage("select", {"seed": 1}, lambda: write("a"), outputs=[out])
    (d / "sft.notes").write_text("written by the user after the stage")
    run.stage("select", {"seed": 2}, lambda: write("b"), outputs=[out])
    assert out.read_text() == "b" and (d / "sft.funnel.json").read_text() == "b"
    assert (d / "sft.py").read_text() == "user code" and (d / "sft.txt").read_text() == "user notes"
    assert (d / "sft.notes").exists()  # matches <out>.* but the stage never recorded it


def test_a_redone_folder_stage_keeps_files_it_did_not_write(tmp_path):
    run = Run(tmp_path / "run")
    model = run.dir / "model"

    def train(tag):
        (model / "checkpoints").mkdir(parents=True, exist_ok=True)
        (model / "weights.bin").write_text(tag)
        (model / "checkpoints" / "step-1").write_text(tag)

    run.stage("train", {"lr": 1}, lambda: train("a"), outputs=[model])
    run.stage("train", {"lr": 2}, lambda: train("b"), outputs=[model])
    assert (model / "weights.bin").read_text() == "b"
    (model / "README.md").write_text("the user's own notes")
    with pytest.raises(InputError, match=r"model: stands where stage 'train' writes its output, and was not written by it"):
        run.stage("train", {"lr": 3}, lambda: train("c"), outputs=[model])
    # The stage's own files went, the user's file and its folder stayed; nothing was run.
    assert (model / "README.md").read_text() == "the user's own notes" and not (model / "weights.bin").exists()


def test_a_preexisting_output_or_one_outside_the_run_dir_is_refused_not_removed(tmp_path):
    run = Run(tmp_path / "run")
    user_folder = run.dir / "existing"
    user_folder.mkdir()
    (user_folder / "keep.txt").write_text("keep")
    run.stage("t", {"x": 1}, lambda: (user_folder / "w.bin").write_text("1"), outputs=[user_folder])
    with pytest.raises(InputError, match="existing: stands where stage 't' writes"):
        run.stage("t", {"x": 2}, lambda: None, outputs=[user_folder])
    assert (user_folder / "keep.txt").read_text() == "keep"
    outside = tmp_path / "outside.jsonl"
    run.stage("o", {"x": 1}, lambda: outside.write_text("1"), outputs=[outside])
    with pytest.raises(InputError, match="outside.jsonl: stands where .*outside the run directory"):
        run.stage("o", {"x": 2}, lambda: outside.write_text("2"), outputs=[outside])
    assert outside.read_text() == "1"


def test_a_killed_stage_still_knows_what_it_may_delete(tmp_path):
    run = Run(tmp_path)
    out = tmp_path / "s.jsonl"
    (tmp_path / "s.jsonl.mine").write_text("the user's")

    def die():
        out.write_text("partial")
        (tmp_path / "s.jsonl.config.yaml").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.stage("s", {"n": 1}, die, outputs=[out])
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["stages"]["s"]["status"] = "running"  # as a SIGKILL leaves it: no chance to record its files
    m["stages"]["s"]["owns"]["files"] = []
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    Run(tmp_path).stage("s", {"n": 2}, lambda: out.write_text("fresh"), outputs=[out])
    assert out.read_text() == "fresh" and not (tmp_path / "s.jsonl.config.yaml").exists()
    assert (tmp_path / "s.jsonl.mine").read_text() == "the user's"


def test_interrupted_stage_is_marked_and_rerun(tmp_path):
    run = Run(tmp_path)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.stage("s", {}, boom)
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["s"]["status"] == "interrupted"
    assert run.stage("s", {}, lambda: {"ok": True})["status"] == "done"


def test_folder_hash_ignores_checkpoints(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"123")
    h = hash_path(tmp_path / "m")["sha256"]
    (tmp_path / "m" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "m" / "checkpoints" / "checkpoint-1" / "x").write_bytes(b"9")
    assert hash_path(tmp_path / "m")["sha256"] == h
    (tmp_path / "m" / "w.bin").write_bytes(b"124")
    assert hash_path(tmp_path / "m")["sha256"] != h


def test_recipe_matches_quickstart_defaults_and_takes_overrides():
    from assay.studies.quickstart import QuickstartConfig
    from assay.studies.recipes import load_recipe

    name, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert name == "quickstart"
    assert to_mapping(cfg) == to_mapping(QuickstartConfig()), "recipes/quickstart.yaml drifted from the defaults"
    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.lr=1e-4", "k=4", "train.lora.r=4"])
    assert cfg.train.lr == 1e-4 and cfg.k == 4 and cfg.train.lora.r == 4
    with pytest.raises(InputError, match="did you mean 'lr'"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.lrr=1e-4"])


def test_recipe_refuses_pipeline_owned_fields(tmp_path):
    from assay.studies.quickstart import resolve
    from assay.studies.recipes import load_recipe

    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.model=other"])
    with pytest.raises(InputError, match="train.model is set by the pipeline"):
        resolve(cfg)
    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["heldout_seed=100"])
    with pytest.raises(InputError, match="overlap"):
        resolve(cfg)


def test_cli_run_dir_records_a_stage(tmp_path, monkeypatch):
    from assay.cli import main
    from assay.core.records import Problem, Sample, Verdict

    run = tmp_path / "r"
    run.mkdir()
    write_records(run / "problems.jsonl", [Problem("a", "1 + 1 =", "2", "t")])
    write_records(run / "samples.jsonl", [Sample("a", 0, "m", "plain-v1", "2", 3, 1, 5.0, "stop", {}, 1)])
    write_records(run / "verdicts.jsonl", [Verdict("a", 0, "2", True, "x")])
    monkeypatch.chdir(tmp_path)
    assert main(["select", "--run-dir", str(run)]) == 0
    st = json.loads((run / "manifest.json").read_text())["stages"]["select:sft.jsonl"]
    assert st["status"] == "done" and {Path(i["path"]).name for i in st["inputs"]} == {
        "problems.jsonl", "samples.jsonl", "verdicts.jsonl"}
    assert (run / "sft.jsonl").exists() and st["outputs"][0]["path"] == str(run / "sft.jsonl")
    assert st["config"]["selectors"] == ["correct", "finished", "dedup", "max_per_problem:4"]


def test_report_needs_a_run_dir(tmp_path):
    from assay.cli import main

    assert main(["report", str(tmp_path)]) == 2


def test_list_flags_split_on_commas():
    """Bare `list` fields given as flags become lists (a string here once became its characters)."""
    import argparse

    from assay.core.config import add_config_args, config_from_args
    from assay.select.stage import SelectConfig

    p = argparse.ArgumentParser()
    add_config_args(p, SelectConfig)
    cfg = config_from_args(SelectConfig, p.parse_args(["--selectors", "correct,dedup,shortest:2"]))
    assert cfg.selectors == ["correct", "dedup", "shortest:2"]
