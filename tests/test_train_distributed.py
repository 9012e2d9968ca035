"""``accelerate launch`` with 2 CPU processes (gloo) trains what one process trains at the same
global batch, writes one log and one model, counts tokens and FLOPs once, and resumes.

The processes are real: accelerate's launcher starts them through torchrun (``--multi_gpu`` is
its name for "several processes"; on a machine without GPUs the Trainer runs them on the CPU with
gloo). ``--cpu`` would not do: it runs a single process unless MPI is set up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from assay.core.io import write_records
from assay.core.records import SFTExample

ROWS = 16


@pytest.fixture(scope="module")
def sft16(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sft16") / "sft.jsonl"
    write_records(p, [SFTExample(
        id=f"p{i}/0", messages=[{"role": "user", "content": f"What is {i} + {i}?"},
                                {"role": "assistant", "content": f"{i} + {i} = {2 * i}. The answer is {2 * i}."}],
        problem_id=f"p{i}", sample_index=0, model="tiny", prompt_template="plain-v1", completion_tokens=12,
        selected_by="correct") for i in range(ROWS)])
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data, out, model, batch: int) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--model", str(model), "--max-steps", "6",
            "--batch-size", str(batch), "--save-steps", "2", "--keep-checkpoints", "0", "--lr", "1e-3",
            "--dtype", "float32"]


def _launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), "-m", "assay.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _same_run(got: Path, ref: Path) -> None:
    import torch

    s, r = (json.loads((d / "train_summary.json").read_text()) for d in (got, ref))
    for k in ("steps", "tokens", "loss_tokens", "sequences"):
        assert s[k] == r[k], k
    assert s["flops"] == pytest.approx(r["flops"], rel=1e-12)
    a, b = _log(got), _log(ref)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 7))
    # The same batches, the same averaged loss: equal up to the order of floating-point sums.
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-4)
    assert [x["grad_norm"] for x in a] == pytest.approx([x["grad_norm"] for x in b], rel=1e-3)
    assert [x["tokens"] for x in a] == [x["tokens"] for x in b]  # counted once: all ranks summed
    assert [x["flops"] for x in a] == pytest.approx([x["flops"] for x in b], rel=1e-12)
    wa, wb = _weights(got), _weights(ref)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_two_processes_train_the_one_process_model_and_resume(tiny_model_dir, sft16, tmp_path, capsys, monkeypatch):
    import torch

    from assay.cli import main

    if torch.cuda.is_available():
        pytest.skip("compares CPU processes with an in-process CPU run; this host has a GPU")
    ref = tmp_path / "one"
    assert main(_train_args(sft16, ref, tiny_model_dir, batch=4)) == 0
    two = tmp_path / "two"
    done = _launch(_train_args(sft16, two, tiny_model_dir, batch=2), processes=2)
    assert done.stdout.count("[assay] train (lora)") == 1  # one process reports
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["identity"]["world_size"] == 2
    _same_run(two, ref)
    # One writer per file: one log, one model; each rank's token meter beside each checkpoint.
    assert sorted(p.name for p in two.glob("*.jsonl")) == ["train_log.jsonl"]
    ckpts = sorted((two / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in ckpts[1].glob("assay_meter.*.json")) == ["assay_meter.0.json", "assay_meter.1.json"]

    # Killed after checkpoint-4: no summary or final model, no checkpoint-6, but the log lines of
    # steps 5-6 a kill leaves behind. The rerun resumes on both ranks and ends where the
    # uninterrupted run did, without counting steps 5-6 twice.
    (two / "train_summary.json").unlink()
    (two / "model.safetensors").unlink()
    shutil.rmtree(ckpts[2])
    _launch(_train_args(sft16, two, tiny_model_dir, batch=2), processes=2)
    resumed = json.loads((two / "train_summary.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-4")
    _same_run(two, ref)

    # Another number of processes is another effective batch: not resumed into this folder.
    (two / "train_summary.json").unlink()
    capsys.readouterr()
    assert main(_train_args(sft16, two, tiny_model_dir, batch=2)) == 2
    assert "world_size: 2 then, 1 now" in capsys.readouterr().err
