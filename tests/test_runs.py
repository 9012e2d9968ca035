"""Run directories, lineage manifests, recipes and `--run-dir` on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.config import to_mapping
from assay.io import InputError, write_records
from assay.runs import Run, hash_path

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


def test_changed_config_clears_stale_outputs_before_rerun(tmp_path):
    run = Run(tmp_path)
    out = tmp_path / "samples.jsonl"

    def append(tag):
        with open(out, "a") as fh:
            fh.write(tag + "\n")

    run.stage("s", {"n": 1}, lambda: append("a"), outputs=[out])
    (tmp_path / "samples.jsonl.config.yaml").write_text("old")
    run.stage("s", {"n": 2}, lambda: append("b"), outputs=[out])
    # The resumable output was made under n=1: it is removed (with its side files), not appended to.
    assert out.read_text() == "b\n" and not (tmp_path / "samples.jsonl.config.yaml").exists()


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
    from assay.quickstart import QuickstartConfig
    from assay.recipes import load_recipe

    name, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert name == "quickstart"
    assert to_mapping(cfg) == to_mapping(QuickstartConfig()), "recipes/quickstart.yaml drifted from the defaults"
    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.lr=1e-4", "k=4", "train.lora.r=4"])
    assert cfg.train.lr == 1e-4 and cfg.k == 4 and cfg.train.lora.r == 4
    with pytest.raises(InputError, match="did you mean 'lr'"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.lrr=1e-4"])


def test_recipe_refuses_pipeline_owned_fields(tmp_path):
    from assay.quickstart import resolve
    from assay.recipes import load_recipe

    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["train.model=other"])
    with pytest.raises(InputError, match="train.model is set by the pipeline"):
        resolve(cfg)
    _, cfg = load_recipe(REPO / "recipes" / "quickstart.yaml", ["heldout_seed=100"])
    with pytest.raises(InputError, match="overlap"):
        resolve(cfg)


def test_cli_run_dir_records_a_stage(tmp_path, monkeypatch):
    from assay.cli import main
    from assay.records import Problem, Sample, Verdict

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

    from assay.config import add_config_args, config_from_args
    from assay.select import SelectConfig

    p = argparse.ArgumentParser()
    add_config_args(p, SelectConfig)
    cfg = config_from_args(SelectConfig, p.parse_args(["--selectors", "correct,dedup,shortest:2"]))
    assert cfg.selectors == ["correct", "dedup", "shortest:2"]
