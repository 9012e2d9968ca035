"""The sampler: same tokens as transformers' generate, exact FLOPs, stop strings, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from assay import models
from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample
from assay.sampling import SampleConfig, run_sampling
from assay.sampling.engine import ContinuousBatcher, GroupRequest
from assay.sampling.hf import HFGenerator

QUESTIONS = ["What is 12 + 7?", "Tom has 3 apples and buys 5 more. How many apples does he have?",
             "Calculate 5 - 3 - 6.", "What is 9 * 8? Please reason step by step.", "4 - 1 - 7 ="]


def _prompts(tok):
    return [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                    tokenize=True)["input_ids"] for q in QUESTIONS]


def test_greedy_matches_transformers_generate(tiny):
    """Refills, shared prefills and left-alignment must not change a single greedy token."""
    model, tok = tiny
    prompts = _prompts(tok)
    stats = models.stats_from_config(model.config)
    # max_batch 4 with 5 problems x 3 samples forces partial admissions and several refills.
    eng = ContinuousBatcher(model, tok, stats, max_batch=4, max_new_tokens=12, temperature=0.0, refill_fraction=0.25)
    got = {(c.group_id, c.sample_index): c for c in
           eng.run([GroupRequest(str(i), p, [(0, 1), (1, 2), (2, 3)]) for i, p in enumerate(prompts)])}
    assert len(got) == 15
    assert eng.stats.maintenance >= 3
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=12, do_sample=False)[0, len(p):].tolist()
        for s in range(3):
            assert got[(str(i), s)].token_ids == ref, (i, s)
    # Every prompt was prefilled exactly once although its samples were admitted in pieces.
    assert eng.stats.prefill_tokens == sum(len(p) for p in prompts)


def test_sampling_is_per_sample_seeded(tiny):
    """A sample's draw depends on its seed, not on which rows share its batch."""
    model, tok = tiny
    prompts = _prompts(tok)
    stats = models.stats_from_config(model.config)
    reqs = [GroupRequest(str(i), p, [(0, 100 + i), (1, 200 + i)]) for i, p in enumerate(prompts)]

    def run(max_batch):
        eng = ContinuousBatcher(model, tok, stats, max_batch=max_batch, max_new_tokens=10, temperature=1.0, top_p=0.9)
        return {(c.group_id, c.sample_index): c.token_ids for c in eng.run(reqs)}

    a, b = run(2), run(10)
    assert a == b
    assert a[("0", 0)] != a[("0", 1)]  # different seeds, different draws


def test_flops_are_prefill_share_plus_decode(tiny):
    model, tok = tiny
    stats = models.stats_from_config(model.config)
    p = _prompts(tok)[1]
    eng = ContinuousBatcher(model, tok, stats, max_batch=8, max_new_tokens=7, temperature=0.0)
    outs = list(eng.run([GroupRequest("g", p, [(0, 1), (1, 2), (2, 3), (3, 4)])]))
    P = len(p)
    for c in outs:
        T = c.completion_tokens
        expect = models.forward_flops(stats, P) / 4 + models.forward_flops(stats, T - 1, context_before=P)
        assert c.flops == pytest.approx(expect, rel=1e-12)
    # Hand-checked formula: 2*N per token plus 4*layers*d_attn per attended position.
    s = models.ModelStats(n_params=10, n_matmul=10, n_layers=2, d_attn=3)
    assert models.forward_flops(s, 2, context_before=5) == 2 * 10 * 2 + 4 * 2 * 3 * (6 + 7)


def test_stop_string_is_cut(tiny):
    model, tok = tiny
    stats = models.stats_from_config(model.config)
    p = _prompts(tok)[0]
    free = ContinuousBatcher(model, tok, stats, max_batch=2, max_new_tokens=20, temperature=0.0)
    text = list(free.run([GroupRequest("g", p, [(0, 1)])]))[0].text
    assert len(text) > 4
    stop = text[2:4]
    eng = ContinuousBatcher(model, tok, stats, max_batch=2, max_new_tokens=20, temperature=0.0, stop=[stop])
    c = list(eng.run([GroupRequest("g", p, [(0, 1)])]))[0]
    assert c.finish_reason == "stop"
    assert c.text == text[: text.find(stop)]
    assert stop not in c.text


def _problems(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "problems.jsonl"
    write_records(path, [Problem(id=f"p{i}", question=QUESTIONS[i % len(QUESTIONS)] + f" ({i})", answer=str(i),
                                 source="test") for i in range(n)])
    return path


def test_runner_writes_records_and_resumes(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    probs = _problems(tmp_path)
    out = tmp_path / "samples.jsonl"
    cfg = SampleConfig(problems=str(probs), out=str(out), model=str(tiny_model_dir), n=3, max_new_tokens=8,
                       temperature=1.0, seed=7)
    gen = HFGenerator.from_loaded(model, tok, str(tiny_model_dir), max_batch=4)

    class Interrupting:
        """Stops the job after 5 samples, as a Ctrl-C would."""
        model_name = "x"

        def generate(self, groups, decoding):
            for i, g in enumerate(gen.generate(groups, decoding)):
                if i == 5:
                    raise KeyboardInterrupt
                yield g

    with pytest.raises(KeyboardInterrupt):
        run_sampling(cfg, generator=Interrupting(), progress=False)
    assert len(read_records(out, Sample)) == 5
    s = run_sampling(cfg, generator=gen, progress=False)
    assert s["already_done"] == 5 and s["sampled"] == 13
    samples = read_records(out, Sample)
    keys = [(x.problem_id, x.sample_index) for x in samples]
    assert sorted(keys) == sorted((f"p{i}", j) for i in range(6) for j in range(3))
    x = samples[0]
    assert x.model == str(tiny_model_dir) and x.prompt_template == "boxed-v1"
    assert x.decoding == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "stop": []}
    assert x.flops > 0 and x.prompt_tokens > 0
    assert (tmp_path / "samples.jsonl.config.yaml").exists()
    # A third run has nothing to do; a run with other settings refuses to mix into the file.
    assert run_sampling(cfg, generator=gen, progress=False)["sampled"] == 0
    with pytest.raises(InputError, match="temperature"):
        run_sampling(SampleConfig(**{**cfg.__dict__, "temperature": 0.5}), generator=gen, progress=False)
    # The file is a plain dataset.
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 18 and set(ds.column_names) >= {"problem_id", "sample_index", "flops", "decoding"}


def test_sharding_partitions_problems(tmp_path):
    from assay.sampling.runner import select_problems

    ps = [Problem(id=str(i), question="q", answer="1", source="t") for i in range(7)]
    shards = [select_problems(ps, None, f"{i}/3") for i in range(3)]
    assert sorted(p.id for s in shards for p in s) == sorted(p.id for p in ps)
    with pytest.raises(InputError, match="shard"):
        select_problems(ps, None, "3/3")


def test_sigkill_then_rerun_completes_without_loss_or_duplicates(tiny_model_dir, tmp_path):
    """Kill the real CLI with SIGKILL mid-job, rerun the same command, check every key once."""
    probs = _problems(tmp_path, n=8)
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "assay.cli", "sample", "--problems", str(probs), "--out", str(out),
           "--model", str(tiny_model_dir), "--n", "4", "--max-new-tokens", "200", "--max-batch", "4",
           "--temperature", "1.0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("sampler finished before it could be killed; make the job longer")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes().count(b"\n")
    assert 5 <= partial < 32
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(line) for line in out.read_bytes().split(b"\n") if line.strip()]
    keys = [(r["problem_id"], r["sample_index"]) for r in lines]
    assert len(keys) == len(set(keys)) == 32


def test_cli_bad_problems_file_exits_2(tmp_path, capsys):
    from assay.cli import main

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "question": "q", "answer": "1", "source": "s"}\n{"id": "b", "question": 3}\n')
    assert main(["sample", "--problems", str(bad), "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "question" in err


def test_sampling_an_empty_problems_file_is_an_error_not_zero_samples(tmp_path):
    from assay.core.io import InputError
    from assay.sampling.runner import SampleConfig, run_sampling

    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(InputError, match=r"p.jsonl: no problems in it"):
        run_sampling(SampleConfig(problems=str(tmp_path / "p.jsonl"), out=str(tmp_path / "s.jsonl"), model="unused"))
