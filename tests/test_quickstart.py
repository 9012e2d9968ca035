"""The quickstart loop end to end on the tiny model, including real SIGKILLs and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _args(model: Path, run: Path) -> list[str]:
    # Random selection: the tiny model solves nothing, and the loop must still run through.
    return ["quickstart", "--model", str(model), "--run-dir", str(run), "pool_size=60", "heldout_size=12", "k=4",
            "sample.max_new_tokens=48", "select.selectors=[random:40]", "train.max_steps=40", "train.save_steps=4",
            "train.batch_size=4", "eval.max_new_tokens=8"]


def _stage(run: Path, name: str) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"].get(name, {})
    except (FileNotFoundError, ValueError):
        return {}


def _kill_when(cmd: list[str], cond, timeout: float = 120) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if cond():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before the kill; the test needs a longer stage"


def test_quickstart_killed_twice_resumes_to_the_same_result(tiny_model_dir, tmp_path):
    run = tmp_path / "qs"
    cmd = [sys.executable, "-m", "assay.cli"] + _args(tiny_model_dir, run)
    samples = run / "samples.jsonl"
    # Kill 1: in the middle of sampling the training pool.
    _kill_when(cmd, lambda: samples.exists() and samples.read_bytes().count(b"\n") >= 20)
    assert _stage(run, "sample")["status"] == "running" and _stage(run, "eval_base")["status"] == "done"
    n_partial = samples.read_bytes().count(b"\n")
    assert n_partial < 240
    # Kill 2: in the middle of training, once a checkpoint exists.
    ck = run / "trained" / "checkpoints"
    _kill_when(cmd, lambda: ck.exists() and any(ck.glob("checkpoint-*/trainer_state.json")))
    assert not (run / "trained" / "train_summary.json").exists()
    done_before = _stage(run, "sample")["finished"]
    # Final run: finishes from the checkpoint; finished stages are skipped, not redone.
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sample: done already" in out.stdout and "base greedy pass@1" in out.stdout
    from assay.core.io import read_records
    from assay.core.records import Problem, Sample

    # Not str.splitlines: random tiny-model text contains characters it treats as line breaks.
    keys = [(r.problem_id, r.sample_index) for r in read_records(samples, Sample)]
    pool = len(read_records(run / "pool.jsonl", Problem))
    assert len(keys) == len(set(keys)) == 4 * pool
    assert _stage(run, "sample")["finished"] == done_before
    summary = json.loads((run / "trained" / "train_summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 40
    log = [json.loads(x)["step"] for x in (run / "trained" / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 41))
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in stages.values())
    assert (run / "report.md").exists() and (run / "recipe.yaml").exists()


def test_run_recipe_with_overrides_saves_resolved_yaml(tiny_model_dir, tmp_path):
    from assay.cli import main
    from assay.core.config import load_yaml

    run = tmp_path / "r"
    repo = Path(__file__).resolve().parents[1]
    rc = main(["run", str(repo / "recipes" / "quickstart.yaml"), f"model={tiny_model_dir}", f"run_dir={run}",
               "pool_size=8", "heldout_size=4", "k=2", "sample.max_new_tokens=8", "select.selectors=[random:4]",
               "train.max_steps=2", "train.lr=1e-4", "eval.max_new_tokens=4"])
    assert rc == 0
    saved = load_yaml(run / "recipe.yaml")
    assert saved["pipeline"] == "quickstart" and saved["train"]["lr"] == 1e-4
    assert saved["train"]["data"] == str(run / "sft.jsonl")  # resolved: pipeline-owned paths filled in
    assert json.loads((run / "trained" / "train_summary.json").read_text())["steps"] == 2
    report = (run / "report.md").read_text()
    assert "## Before / after" in report and "## Selection funnel" in report and "plot_flops.png" in report
