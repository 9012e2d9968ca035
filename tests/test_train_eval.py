"""Train and evaluate end to end on the tiny random model: the real TRL/PEFT code paths, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.core.hardware import resolve_dtype
from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, SFTExample


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


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_train_resumes_from_checkpoint_without_double_counting(tiny_model_dir, sft_file, tmp_path):
    """Kill after checkpoint-4 of 6 (same config), rerun: the result equals the uninterrupted run."""
    import shutil

    import torch

    from assay.train import run_training

    out = tmp_path / "killed"
    cfg = _cfg(tiny_model_dir, sft_file, out, keep_checkpoints=0)  # keep checkpoint-4 to roll back to
    ref = run_training(cfg, progress=False)
    ref_log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    ref_weights = _weights(out)
    assert ref["steps"] == 6 and (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()
    # Roll the folder back to "killed after checkpoint-4": no summary, no final model, no
    # checkpoint-6, but the log lines of steps 5-6 that a kill would leave behind.
    (out / "train_summary.json").unlink()
    (out / "model.safetensors").unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    s = run_training(cfg, progress=False)
    assert s["resumed_from"].endswith("checkpoint-4")
    for k in ("steps", "tokens", "loss_tokens", "flops", "sequences"):
        assert s[k] == pytest.approx(ref[k], rel=1e-12), k
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in ref_log], rel=1e-4)
    assert [r["tokens"] for r in log] == [r["tokens"] for r in ref_log]
    got = _weights(out)
    assert got.keys() == ref_weights.keys()
    assert all(torch.allclose(got[k], ref_weights[k], atol=1e-6) for k in got)


def test_train_resume_under_another_config_or_data_is_refused(tiny_model_dir, sft_file, tmp_path, capsys):
    """A checkpoint made with other data or another learning rate is not resumed (exit 2)."""
    from assay.cli import main
    from assay.train import run_training

    data = tmp_path / "sft.jsonl"
    write_records(data, _sft_rows())
    out = tmp_path / "o"
    run_training(_cfg(tiny_model_dir, data, out, max_steps=2), progress=False)
    (out / "train_summary.json").unlink()  # killed after checkpoint-2
    argv = ["train", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--max-steps", "2",
            "--batch-size", "4", "--save-steps", "2", "--epochs", "2"]
    capsys.readouterr()
    assert main(argv + ["--lr", "5e-4"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-2: is a checkpoint of a run with another config (lr: 0.001 then, 0.0005 now)" in err
    assert f"delete {out / 'checkpoints'} to train afresh" in err
    write_records(data, _sft_rows(13))  # same path, other content
    assert main(argv + ["--lr", "1e-3"]) == 2
    assert "data.sha256" in capsys.readouterr().err
    assert not (out / "train_summary.json").exists()
    write_records(data, _sft_rows())
    assert main(argv + ["--lr", "1e-3", "save_steps=1", "logging_steps=2"]) == 0  # neither changes the weights
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"].endswith("checkpoint-2")


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
    from assay.eval.stage import EvalConfig, compare, run_eval

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
    from assay.data.benchmarks import BENCHMARKS
    from assay.eval.stage import EvalConfig, run_eval

    assert {"gsm8k-test", "math500", "aime24", "amc23", "svamp", "rg-chain-sum-v1"} <= set(BENCHMARKS.names())
    with pytest.raises(InputError, match="did you mean 'math500'"):
        run_eval(EvalConfig(model=str(tiny_model_dir), benchmark="math50", out=str(tmp_path / "x")))
    r = run_eval(EvalConfig(model=str(tiny_model_dir), benchmark="rg-chain-sum-v1", limit=3, out=str(tmp_path / "rg"),
                            max_new_tokens=4))
    probs = read_records(tmp_path / "rg" / "problems.jsonl", Problem)
    assert len(probs) == 3 and r["protocol"]["n_problems"] == 3
    # Held-out item i is drawn from generator seed 10000 + i (reasoning-gym seeds item i with
    # seed + i): regenerate each from that seed alone. A pool drawn from seed 0 of any size up to
    # 10000 uses seeds 0..size-1, so the two never share a draw.
    import reasoning_gym

    from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED

    assert HELDOUT_SEED == 10_000
    for p in probs:
        entry = json.loads(p.meta["rg_entry"])
        assert json.loads(p.meta["rg_config"])["seed"] == HELDOUT_SEED
        alone = reasoning_gym.create_dataset("chain_sum", seed=HELDOUT_SEED + entry["metadata"]["source_index"], size=1,
                                             **CHAIN_SUM_SMALL)[0]
        assert (alone["question"], alone["answer"]) == (p.question, p.answer)


def test_eval_on_shared_benchmark(shared_data, tmp_path):
    """The first two GSM8K test problems, answered right and wrong by a scripted model: pass@1 is exactly 1/2."""
    from assay.eval.stage import EvalConfig, run_eval
    from assay.sampling import Generated

    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]]
    # The reference is what follows '####'; the script answers row 0 with it and row 1 with it + 1.
    reply = {row["question"]: int(row["answer"].split("####")[-1].replace(",", "")) + i for i, row in enumerate(rows)}

    class Scripted:
        model_name = "scripted"

        def generate(self, groups, decoding):
            for g in groups:
                answer = reply[g.messages[-1]["content"]]
                for i, seed in g.samples:
                    yield Generated(g.problem_id, i, seed, f"So the answer is \\boxed{{{answer}}}.", 5, 3, 1.0, "stop")

    r = run_eval(EvalConfig(model="scripted", benchmark="gsm8k-test", limit=2, out=str(tmp_path / "g"),
                            max_new_tokens=4, data_dir=str(shared_data)), generator=Scripted())
    probs = read_records(tmp_path / "g" / "problems.jsonl", Problem)
    assert [p.question for p in probs] == [row["question"] for row in rows]
    assert r["protocol"]["n_problems"] == 2 and r["metrics"]["greedy_pass@1"] == 0.5
    per = json.loads((tmp_path / "g" / "per_problem.json").read_text())["greedy"]
    assert per == {probs[0].id: True, probs[1].id: False}


def test_mcnemar_and_wilson_hand_computed():
    from assay.eval.stats import mcnemar_exact, wilson

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
    from assay.eval.stage import EvalConfig, protocol

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
    from assay.eval.stage import EvalConfig, compare, run_eval

    write_records(tmp_path / "bench.jsonl", _problems(3))
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark=str(tmp_path / "bench.jsonl"), out=str(tmp_path / "e"),
                     max_new_tokens=4)
    run_eval(cfg)
    with pytest.raises(InputError, match=r"other settings \(dtype\)"):
        run_eval(EvalConfig(**{**cfg.__dict__, "dtype": "float32" if resolve_dtype("auto") == "bfloat16" else "bfloat16"}))
    assert compare(tmp_path / "e" / "result.json", tmp_path / "e")["gain"] == 0
