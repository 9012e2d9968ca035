"""One way to build a generator: per-backend options, checked, and the same from every command.

The eval-through-a-server test runs ``assay eval`` against a loopback ``assay serve`` of the tiny
model: the same weights behind two backends must give the same greedy verdicts, under two
protocols (so compare never treats them as one).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample, Verdict
from assay.sampling.backends import BACKENDS, HFOptions, OpenAIOptions, make_generator, resolve_options

SRC = Path(__file__).resolve().parents[1] / "src" / "assay"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from assay.sampling.serve import ServeConfig, make_server

    # fp32 on both sides: in bf16 the server's batches (8) and eval's (64) round differently.
    srv = make_server(ServeConfig(model=str(tiny_model_dir), name="tiny", port=0, max_batch=8, dtype="float32"))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("backend,typo,meant", [("hf", "max_bach", "max_batch"), ("hf", "dtpye", "dtype"),
                                                ("openai", "nparams", "n_params"),
                                                ("openai", "api_key_var", "api_key_env")])
def test_each_backend_rejects_an_unknown_option_with_did_you_mean(backend, typo, meant):
    with pytest.raises(InputError) as exc:
        make_generator(backend, "m", {typo: 1})
    msg = str(exc.value)
    assert f"backend_options.{typo}" in msg and f"backend '{backend}'" in msg and f"did you mean '{meant}'" in msg
    assert exc.value.key == f"backend_options.{typo}"


def test_bad_values_name_their_key_and_flat_flags_map_into_the_options():
    for backend, opts, key in [("hf", {"max_batch": 0}, "max_batch"), ("hf", {"dtype": "fp8"}, "dtype"),
                               ("openai", {"concurrency": "many"}, "concurrency"),
                               ("openai", {"n_params": -3}, "n_params"), ("openai", {"timeout_s": 0}, "timeout_s")]:
        with pytest.raises(InputError) as exc:
            resolve_options(backend, opts)
        assert exc.value.key == f"backend_options.{key}", (backend, opts, str(exc.value))
    # A bad flat flag is named as the flag it came from, inside a pipeline section too.
    with pytest.raises(InputError) as exc:
        resolve_options("hf", {}, flat={"max_batch": 0}, section="sample")
    assert exc.value.key == "sample.max_batch"
    o = resolve_options("hf", {"refill_fraction": "0.25"}, flat={"dtype": "bfloat16", "max_batch": 4, "base_url": "x"})
    assert o == HFOptions(dtype="bfloat16", max_batch=4, refill_fraction=0.25)
    # --max-batch has always been the client's concurrency; backend_options win over flat flags.
    o = resolve_options("openai", "n_params=7e9,api_key_env=MY_KEY", flat={"max_batch": 16, "base_url": "http://h/v1"})
    assert (o.concurrency, o.n_params, o.api_key_env, o.base_url) == (16, 7e9, "MY_KEY", "http://h/v1")
    assert resolve_options("openai", {"concurrency": 2}, flat={"max_batch": 16}).concurrency == 2
    assert sorted(BACKENDS.names()) == ["hf", "openai", "vllm"]


def test_url_credentials_stay_out_of_the_options_repr():
    o = OpenAIOptions(base_url="http://user:hunter22@h/v1")
    assert "hunter22" not in repr(o)


def test_cli_names_the_backend_option_it_refuses(capsys):
    from assay.cli import main

    assert main(["sample", "--backend", "openai", "backend_options.nparams=7e9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "override 'backend_options.nparams=7e9'" in err and "did you mean 'n_params'" in err
    assert main(["eval", "--backend-options", "max_bach=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("assay: error: --backend-options: backend_options.max_bach:") and "'max_batch'" in err
    assert main(["judge", "--generator", "openai", "backend_options.concurrency=0"]) == 2
    assert "backend_options.concurrency" in capsys.readouterr().err
    assert main(["serve", "backend_options.refill_fraction=2"]) == 2
    assert "override 'backend_options.refill_fraction=2': must be in (0, 1]" in capsys.readouterr().err


def test_make_generator_is_the_only_constructor():
    """Outside the factory module nothing constructs a backend's Generator class itself."""
    direct = re.compile(r"\b(HFGenerator|OpenAIGenerator|VLLMGenerator)\(")
    # The vLLM backend is built on the OpenAI client (its own server behind it), in its own module.
    composed = {SRC / "sampling" / "vllm_backend.py": "OpenAIGenerator("}
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p != SRC / "sampling" / "backends.py"
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if direct.search(line) and composed.get(p, "\0") not in line]
    assert offenders == []
    # ...nor calls a registry entry's builder around make_generator's checks.
    around = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p != SRC / "sampling" / "backends.py"
              and re.search(r"BACKENDS\.get\([^)]*\)\s*(\(|\.build)", p.read_text(encoding="utf-8"))]
    assert around == []


def _bench(path: Path) -> Path:
    write_records(path, [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1), "test") for i in range(6)])
    return path


def _eval(out: Path, bench: Path, *extra: str) -> dict:
    from assay.cli import main

    assert main(["eval", "--benchmark", str(bench), "--out", str(out), "--max-new-tokens", "8", *extra]) == 0
    return json.loads((out / "result.json").read_text())


def test_eval_through_a_served_model_matches_the_local_backend_under_another_protocol(server, tiny_model_dir,
                                                                                      tmp_path):
    from assay.eval.stage import compare

    # The tiny random model's greedy text has no answer in it, so both score 0: the test is that
    # every text and verdict is the same, whichever backend produced it.
    bench = _bench(tmp_path / "bench.jsonl")
    hf = _eval(tmp_path / "hf", bench, "--model", str(tiny_model_dir), "--backend", "hf", "--dtype", "float32")
    api = _eval(tmp_path / "api", bench, "--model", "tiny", "--backend", "openai", "--base-url", server,
                "--max-batch", "4")
    assert api["metrics"]["greedy_pass@1"] == hf["metrics"]["greedy_pass@1"]
    texts = [{s.problem_id: s.text for s in read_records(tmp_path / d / "greedy.samples.jsonl", Sample)}
             for d in ("hf", "api")]
    assert texts[0] == texts[1] and len(texts[0]) == 6
    verdicts = [[(v.problem_id, v.extracted, v.correct) for v in read_records(tmp_path / d / "greedy.verdicts.jsonl",
                                                                               Verdict)] for d in ("hf", "api")]
    assert sorted(verdicts[0]) == sorted(verdicts[1])
    assert hf["protocol"]["backend"] == "hf" and hf["protocol"]["backend_options"] == {"dtype": "float32"}
    assert api["protocol"]["backend"] == "openai" and api["protocol"]["backend_options"] == {"chat": True}
    assert hf["protocol"]["protocol_id"] != api["protocol"]["protocol_id"]
    with pytest.raises(InputError, match="different protocols.*backend"):
        compare(tmp_path / "hf", tmp_path / "api")
    assert server.split("//")[1] not in json.dumps(api["protocol"])  # where the server is, is not the protocol


def test_n_params_set_through_options_reaches_the_flops_accounting(server, tmp_path):
    from assay.cli import main

    write_records(tmp_path / "p.jsonl", [Problem("a", "What is 1 + 1?", "2", "t"), Problem("b", "2 + 2?", "4", "t")])
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--problems", str(tmp_path / "p.jsonl"), "--out", str(out), "--backend", "openai",
                 "--base-url", server, "--model", "tiny", "--n", "2", "--max-new-tokens", "4",
                 "backend_options.n_params=1e6"]) == 0
    samples = read_records(out, Sample)
    assert len(samples) == 4
    for s in samples:
        assert s.flops == pytest.approx(2.0 * 1e6 * (s.prompt_tokens / 2 + s.completion_tokens)) and s.flops > 0
    assert make_generator("openai", "tiny", {"base_url": server, "n_params": "7e9"}).n_params == 7e9
