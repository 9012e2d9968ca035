"""Train and evaluate end to end on the tiny random model: the real TRL/PEFT code paths, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.io import InputError, read_records, write_records
from assay.records import Problem, SFTExample


def _sft_rows(n: int = 12) -> list[SFTExample]:
    return [SFTExample(id=f"p{i}/0", messages=[{"role": "user", "content": f"What is {i} + 1?"},
                                                {"role": "assistant", "content": f"The answer is {i + 1}."}],
                       problem_id=f"p{i}", sample_index=0, model="tiny", prompt_template="plain-v1",
                       completion_tokens=6, selected_by="correct") for i in range(n)]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    write_records(p, _sft_rows())
    return p


def _cfg(tiny_model_dir, sft_file, out, **kw):
    from assay.train import TrainConfig

    base = dict(data=str(sft_file), out=str(out), model=str(tiny_model_dir), epochs=2, batch_size=4, save_steps=2, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_lora_train_saves_merged_checkpoint_log_and_flops(tiny_model_dir, sft_file, tmp_path):
    from assay import models
    from assay.train import run_training

    s = run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "ck"), progress=False)
    out = tmp_path / "ck"
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "train_config.yaml").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, s["steps"] + 1)) and s["steps"] == 6
    assert log[-1]["tokens"] == s["tokens"] and log[-1]["flops"] == pytest.approx(s["flops"])
    # Every sequence is seen once per epoch; only assistant tokens carry loss.
    assert s["sequences"] == 24 and 0 < s["loss_tokens"] < s["tokens"]
    # LoRA FLOPs: 2 forward passes of the base plus 6 per adapter parameter per token.
    st = models.stats_for(str(tiny_model_dir))
    assert s["n_trainable"] < st.n_params
    assert s["flops"] > 2 * 2 * st.n_matmul * s["tokens"]
    assert s["flops"] < 3 * 2 * st.n_matmul * s["tokens"] * 1.5
    # The merged checkpoint loads as a plain model spec and differs from the base.
    m, _ = models.load(str(out))
    base, _ = models.load(str(tiny_model_dir))
    diff = sum(float((a - b).abs().sum()) for a, b in zip(m.parameters(), base.parameters()))
    assert diff > 0
    # A finished folder is not trained again.
    assert run_training(_cfg(tiny_model_dir, sft_file, out), progress=False) == s


def test_training_is_seeded(tiny_model_dir, sft_file, tmp_path):
    from assay.train import run_training

    a = run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "a", max_steps=2), progress=False)
    b = run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "b", max_steps=2), progress=False)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5) and a["tokens"] == b["tokens"]


def test_full_finetune_flops_are_three_forwards(tiny_model_dir, sft_file, tmp_path):
    from assay import models
    from assay.train import run_training

    s = run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "full", method="full", max_steps=2, lr=1e-4),
                     progress=False)
    st = models.stats_for(str(tiny_model_dir))
    assert s["n_trainable"] == st.n_params and not (tmp_path / "full" / "adapter").exists()
    # 3 x forward; forward = 2 n_matmul per token + attention, so strictly above 6 N T.
    assert s["flops"] >= 6 * st.n_matmul * s["tokens"]


def test_train_resumes_from_checkpoint_without_double_counting(tiny_model_dir, sft_file, tmp_path):
    """Simulate a kill after step 4: the checkpoint exists, the summary does not."""
    import shutil

    from assay.train import run_training

    ref = run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "ref"), progress=False)
    out = tmp_path / "killed"
    run_training(_cfg(tiny_model_dir, sft_file, out), progress=False)
    # Roll the folder back to "killed after checkpoint-4": drop the final outputs and later log lines.
    (out / "train_summary.json").unlink()
    ck = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert ck, "a checkpoint should have been kept"
    last = ck[-1]
    mid = out / "checkpoints" / "checkpoint-4"
    if last.name != "checkpoint-4":
        # save_total_limit=1 keeps only the last; recreate the mid one from a fresh partial run.
        shutil.rmtree(out)
        run_training(_cfg(tiny_model_dir, sft_file, out, max_steps=4), progress=False)
        (out / "train_summary.json").unlink()
        assert (mid / "trainer_state.json").exists()
    s = run_training(_cfg(tiny_model_dir, sft_file, out), progress=False)
    assert s["resumed_from"].endswith("checkpoint-4")
    assert s["tokens"] == ref["tokens"] and s["steps"] == ref["steps"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, ref["steps"] + 1))


def test_train_rejects_bad_rows(tiny_model_dir, tmp_path):
    from assay.train import run_training

    bad = _sft_rows(2)
    bad[1].messages = bad[1].messages[:1]
    write_records(tmp_path / "bad.jsonl", bad)
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'messages'"):
        run_training(_cfg(tiny_model_dir, tmp_path / "bad.jsonl", tmp_path / "o"), progress=False)
    with pytest.raises(InputError, match="did you mean 'lora'"):
        run_training(_cfg(tiny_model_dir, tmp_path / "bad.jsonl", tmp_path / "o", method="lorra"), progress=False)


def _problems(n=6) -> list[Problem]:
    return [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1), "test") for i in range(n)]


def test_eval_protocol_metrics_and_compare(tiny_model_dir, tmp_path):
    from assay.evaluate import EvalConfig, compare, run_eval

    write_records(tmp_path / "bench.jsonl", _problems())
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark=str(tmp_path / "bench.jsonl"), out=str(tmp_path / "e1"),
                     max_new_tokens=8, n=4, max_batch=8)
    r = run_eval(cfg)
    m = r["metrics"]
    assert set(m) >= {"greedy_pass@1", "greedy_ci95", "avg@4", "maj@4", "pass@4", "pass@1"}
    assert r["protocol"]["n_problems"] == 6 and r["protocol"]["template"] == "plain-v1"
    assert r["protocol"]["max_new_tokens"] == 8 and r["protocol"]["sampling"]["temperature"] == 0.7
    per = json.loads((tmp_path / "e1" / "per_problem.json").read_text())["greedy"]
    assert sum(per.values()) / 6 == m["greedy_pass@1"]
    # Same protocol on the same problems: comparable (identical model -> zero gain).
    r2 = run_eval(EvalConfig(**{**cfg.__dict__, "out": str(tmp_path / "e2")}))
    assert r2["protocol"]["protocol_id"] == r["protocol"]["protocol_id"]
    c = compare(tmp_path / "e1", tmp_path / "e2")
    assert c["gain"] == 0 and c["p_value"] == 1.0 and c["n"] == 6
    # Another template is another protocol: refused.
    run_eval(EvalConfig(**{**cfg.__dict__, "out": str(tmp_path / "e3"), "template": "boxed-v1", "n": 0}))
    with pytest.raises(InputError, match="different protocols"):
        compare(tmp_path / "e1", tmp_path / "e3")


def test_eval_named_benchmarks_and_unknown_name(tmp_path, tiny_model_dir):
    from assay.evaluate import BENCHMARKS, EvalConfig, run_eval

    assert {"gsm8k-test", "math500", "aime24", "amc23", "svamp", "rg-chain-sum-v1"} <= set(BENCHMARKS.names())
    with pytest.raises(InputError, match="did you mean 'math500'"):
        run_eval(EvalConfig(model=str(tiny_model_dir), benchmark="math50", out=str(tmp_path / "x")))
    r = run_eval(EvalConfig(model=str(tiny_model_dir), benchmark="rg-chain-sum-v1", limit=3, out=str(tmp_path / "rg"),
                            max_new_tokens=4))
    probs = read_records(tmp_path / "rg" / "problems.jsonl", Problem)
    assert len(probs) == 3 and r["protocol"]["n_problems"] == 3
    # Held-out reasoning-gym items come from generator seeds 10000.., disjoint from pools drawn from 0..
    assert json.loads(probs[0].meta["rg_entry"])["metadata"]["source_index"] == 0 or probs[0].source.startswith("reasoning_gym")


def test_eval_on_shared_benchmark(shared_data, tiny_model_dir, tmp_path):
    from assay.evaluate import EvalConfig, run_eval

    r = run_eval(EvalConfig(model=str(tiny_model_dir), benchmark="gsm8k-test", limit=2, out=str(tmp_path / "g"),
                            max_new_tokens=4, data_dir=str(shared_data)))
    assert r["protocol"]["n_problems"] == 2 and r["metrics"]["greedy_pass@1"] in (0.0, 0.5, 1.0)


def test_mcnemar_and_wilson_hand_computed():
    from assay.evaluate import mcnemar_exact, wilson

    # 10 discordant pairs split 9/1: two-sided p = 2 * (C(10,0)+C(10,1)) / 2^10 = 22/1024.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_unmerged_lora_folder_is_a_model_spec(tiny_model_dir, sft_file, tmp_path):
    import torch

    from assay import models
    from assay.train import run_training

    run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "m", max_steps=2), progress=False)
    run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "u", max_steps=2, merge=False), progress=False)
    assert (tmp_path / "u" / "adapter_config.json").exists() and not (tmp_path / "u" / "config.json").exists()
    assert models.stats_for(str(tmp_path / "u")) == models.stats_for(str(tiny_model_dir))
    merged, _ = models.load(str(tmp_path / "m"))
    applied, _ = models.load(str(tmp_path / "u"))
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, applied(x).logits, atol=1e-5)


def test_protocol_id_depends_on_content_not_location(tiny_model_dir, tmp_path):
    from assay.evaluate import EvalConfig, protocol

    probs = _problems(3)
    a = protocol(EvalConfig(benchmark=str(tmp_path / "run1" / "heldout.jsonl")), probs)
    b = protocol(EvalConfig(benchmark=str(tmp_path / "run2" / "heldout.jsonl")), probs)
    assert a["protocol_id"] == b["protocol_id"]
    c = protocol(EvalConfig(benchmark=str(tmp_path / "run1" / "heldout.jsonl")), probs[:2])
    d = protocol(EvalConfig(benchmark=str(tmp_path / "run1" / "heldout.jsonl"), max_new_tokens=64), probs)
    assert len({a["protocol_id"], c["protocol_id"], d["protocol_id"]}) == 3


def test_finished_folder_with_another_config_is_refused(tiny_model_dir, sft_file, tmp_path):
    from assay.train import run_training

    run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "o", max_steps=1), progress=False)
    with pytest.raises(InputError, match="trained with another config"):
        run_training(_cfg(tiny_model_dir, sft_file, tmp_path / "o", max_steps=1, lr=5e-4), progress=False)


def test_eval_folder_with_other_settings_is_refused_and_compare_takes_result_paths(tiny_model_dir, tmp_path):
    from assay.evaluate import EvalConfig, compare, run_eval

    write_records(tmp_path / "bench.jsonl", _problems(3))
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark=str(tmp_path / "bench.jsonl"), out=str(tmp_path / "e"),
                     max_new_tokens=4)
    run_eval(cfg)
    with pytest.raises(InputError, match=r"other settings \(dtype\)"):
        run_eval(EvalConfig(**{**cfg.__dict__, "dtype": "bfloat16"}))
    assert compare(tmp_path / "e" / "result.json", tmp_path / "e")["gain"] == 0
