"""Progress output off a terminal: newline-separated lines, at most one per interval, no carriage returns."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from assay.core.progress import LineProgress, bar, quiet_library_bars

SRC = Path(__file__).resolve().parents[1] / "src" / "assay"


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_are_rate_limited_and_plain():
    out, clock = io.StringIO(), FakeClock()
    p = bar(400, "sample", "sample", stream=out, interval=5.0, clock=clock)
    assert isinstance(p, LineProgress)
    for _ in range(400):  # one item every 0.25 s: 100 s in all
        clock.t += 0.25
        p.update(1)
        p.set_postfix(tok_s="12.5")
    p.close()
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # One line per 5 s of a 100 s run (the 20th falls on the last update), none for the close.
    assert len(lines) == 20
    assert lines[0] == "[assay] sample: 20/400 (5%), 4.0 sample/s, eta 95 s, tok_s=12.5"
    assert lines[5] == "[assay] sample: 120/400 (30%), 4.0 sample/s, eta 70 s, tok_s=12.5"
    assert lines[-1] == "[assay] sample: 400/400 (100%), 4.0 sample/s, 100 s, tok_s=12.5"


def test_close_prints_the_final_count_and_resumed_work_is_not_counted_in_the_rate():
    out, clock = io.StringIO(), FakeClock()
    with bar(10, "verify", "sample", initial=4, stream=out, interval=5.0, clock=clock) as p:
        for _ in range(6):
            clock.t += 0.5
            p.update(1)
    # 3 s in all: below the interval, so the only line is the final one; 6 done in 3 s, not 10.
    assert out.getvalue() == "[assay] verify: 10/10 (100%), 2.0 sample/s, 3 s\n"


def test_disabled_bar_prints_nothing_and_a_terminal_gets_tqdm():
    out = io.StringIO()
    p = bar(5, "x", stream=out, enabled=False)
    p.update(5)
    p.close()
    assert out.getvalue() == ""
    from tqdm import tqdm

    tty = FakeTTY()
    t = bar(5, "x", stream=tty)
    assert isinstance(t, tqdm)
    t.close()


def test_library_bars_are_off_off_terminal_and_the_environment_is_restored(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with quiet_library_bars(io.StringIO()):
        assert os.environ["TQDM_DISABLE"] == "1"
    assert "TQDM_DISABLE" not in os.environ
    with quiet_library_bars(FakeTTY()):
        assert "TQDM_DISABLE" not in os.environ


def test_piped_training_log_has_no_carriage_returns(tiny_model_dir, tmp_path):
    """`assay train` with its output in a pipe: the HF Trainer's bar is off, its log lines remain."""
    from assay.core.io import write_records
    from assay.core.records import SFTExample

    rows = [SFTExample(f"p{i}/0", [{"role": "user", "content": f"{i} + 1 ="}, {"role": "assistant", "content": str(i + 1)}],
                       f"p{i}", 0, "m", "plain-v1", 2, "t") for i in range(4)]
    write_records(tmp_path / "sft.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    env.pop("TQDM_DISABLE", None)
    out = subprocess.run([sys.executable, "-m", "assay.cli", "train", "--data", str(tmp_path / "sft.jsonl"),
                          "--out", str(tmp_path / "ckpt"), "--model", str(tiny_model_dir), "--max-steps", "3",
                          "--batch-size", "2", "--merge", "false"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout + out.stderr
    assert sum("'loss'" in line for line in out.stdout.splitlines()) == 3  # one log line per step


def test_no_module_draws_its_own_tqdm_bar():
    """Every bar goes through assay.core.progress, so none writes carriage returns into a log."""
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "progress.py"
                 and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(encoding="utf-8"), re.M)]
    assert offenders == []


def test_sampling_and_verification_write_lines_to_a_piped_stderr(tmp_path, capsys):
    """The real stages, with stderr captured (not a terminal): plain lines, no carriage returns."""
    from assay.core.io import write_records
    from assay.core.records import Problem
    from assay.sampling import Generated, SampleConfig, run_sampling
    from assay.verify import stage as verify

    class Scripted:
        def generate(self, groups, decoding):
            for g in groups:
                for i, seed in g.samples:
                    yield Generated(problem_id=g.problem_id, sample_index=i, seed=seed, text=r"\boxed{2}",
                                    prompt_tokens=3, completion_tokens=2, flops=1.0, finish_reason="stop")

    problems = tmp_path / "p.jsonl"
    write_records(problems, [Problem(f"p{i}", "1 + 1 =", "2", "t") for i in range(5)])
    cfg = SampleConfig(problems=str(problems), out=str(tmp_path / "s.jsonl"), n=3, template="plain-v1")
    assert run_sampling(cfg, generator=Scripted())["sampled"] == 15
    verify.cli_run(verify.VerifyConfig(problems=str(problems), samples=cfg.out, out=str(tmp_path / "v.jsonl"),
                                       workers=1))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("[assay] ")]
    assert [ln.split(":")[0] for ln in lines] == ["[assay] sample", "[assay] verify"]
    assert lines[0].startswith("[assay] sample: 15/15 (100%), ") and "tok_s=" in lines[0]
    assert lines[1].startswith("[assay] verify: 15/15 (100%), ")
    assert sum(json.loads(x)["correct"] for x in (tmp_path / "v.jsonl").read_text().splitlines()) == 15


def test_an_empty_loop_prints_nothing():
    out = io.StringIO()
    p = bar(0, "features", stream=out)
    p.close()
    assert out.getvalue() == ""
