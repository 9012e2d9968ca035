"""README's promise, per command: bad input stops with one `assay: error:` line naming the file, line,
flag or key, and exit code 2; never a traceback, and (for pipelines) before the first stage runs.

The table has at least one bad input for every command in ``assay.cli.COMMANDS``; a test fails if a
command is added without one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.cli import COMMANDS, main

HUB_ID = "assay-tests/no-such-model"


def _files(d: Path) -> dict[str, str]:
    """The inputs the table refers to, by name."""
    def put(name: str, data: bytes) -> str:
        (d / name).write_bytes(data)
        return str(d / name)

    problem = {"id": "a", "question": "1 + 1 =", "answer": "2", "source": "t"}
    sample = {"problem_id": "a", "sample_index": 0, "model": "m", "prompt_template": "plain-v1", "text": "2",
              "prompt_tokens": 3, "completion_tokens": 1, "flops": 5.0, "finish_reason": "stop", "decoding": {},
              "seed": 1}
    return {
        "problems": put("problems.jsonl", (json.dumps(problem) + "\n").encode()),
        "samples": put("samples.jsonl", (json.dumps(sample) + "\n").encode()),
        "empty": put("empty.jsonl", b""),
        "bad_json": put("sft.jsonl", b'\n{"id": "y", \n'),
        "bad_yaml": put("bad.yaml", b"n: 2\ntemperature: [0.7\nseed: 1\n"),
        "bad_utf8": put("utf8.yaml", b"n: 2\n\xff: 1\n"),
        "bad_value": put("value.yaml", b"n: 2\ntemperature: hot\n"),
        "bad_step": put("curate.yaml", b"steps:\n  - dedupe: {}\n"),
        "bad_recipe": put("recipe.yaml", b"pipeline: quickstart\nk: 2\ntrain:\n  lr: 1.0e-4\n  method: lorra\n"),
        "bad_pipeline": put("pipe.yaml", b"# a comment\npipeline: quickstrt\n"),
        "run_dir": str(d / "run"),
        "missing": str(d / "nothing-here.jsonl"),
    }


# (command, argv with {file} placeholders, fragments the one line must contain)
CASES = [
    ("problems", ["problems", "--source", "rg:chain_summ", "--out", "{run_dir}/p.jsonl"],
     ["--source: 'chain_summ' is not a known reasoning-gym task", "did you mean 'chain_sum'"]),
    ("problems", ["problems", "--size", "two"], ["--size: expected an integer, got 'two'"]),
    ("sample", ["sample", "--problems", "{empty}", "--out", "{run_dir}/s.jsonl"], ["{empty}: no problems in it"]),
    ("sample", ["sample", "--problems", "{problems}", "temperature=["],
     ["override 'temperature=[': the value is not valid YAML"]),
    ("sample", ["sample", "--config", "{bad_yaml}"], ["{bad_yaml}:3: invalid YAML"]),
    ("sample", ["sample", "--config", "{bad_utf8}"], ["{bad_utf8}:2: invalid UTF-8"]),
    ("sample", ["sample", "--config", "{bad_value}"], ["{bad_value}:2: temperature: expected a number, got 'hot'"]),
    ("sample", ["sample", "--bogus"], ["sample: unrecognized arguments: --bogus"]),
    ("sample", ["sample", "--problems", "{problems}", "--template", "boxd-v1"],
     ["--template: 'boxd-v1' is not a known prompt template", "did you mean 'boxed-v1'"]),
    ("verify", ["verify", "--problems", "{problems}", "--samples", "{samples}"], ["verify: --out is required"]),
    ("verify", ["verify", "--problems", "{problems}", "--samples", "{samples}", "--out", "{run_dir}/v.jsonl",
                "--extractors", "boxd"], ["--extractors: 'boxd' is not a known answer extractor"]),
    ("stats", ["stats", "--samples", "{samples}"], ["stats: --verdicts is required"]),
    ("stats", ["stats", "--samples", "{missing}", "--verdicts", "{samples}"], ["{missing}: no such file"]),
    ("plan", ["plan", "--problems", "{problems}"], ["models: give at least one model"]),
    ("judge", ["judge", "--backend", "nope"], ["--backend: 'nope' is not a known judge backend"]),
    ("solutions", ["solutions", "--problems", "{problems}", "temperatures=[-1]"],
     ["override 'temperatures=[-1]': must be a list of temperatures >= 0"]),
    ("solutions", ["solutions", "--problems", "{problems}", "student=smollm2-135m-instruct", "band=[0.8, 0.2]"],
     ["override 'band=[0.8, 0.2]': must be [low, high] with 0 <= low <= high <= 1"]),
    ("critique", ["critique", "--problems", "{problems}", "--solutions", "{missing}"], ["{missing}: no such file"]),
    ("critique", ["critique", "--template", "critic-v1"], ["--template: 'critic-v1' is not a known critique template",
                                                           "did you mean 'critique-v1'"]),
    ("study", ["study", "cft", "band=[0.5]", "run_dir={run_dir}"],
     ["override 'band=[0.5]': must be [low, high]"]),
    ("synthesize", ["synthesize", "--seeds", "{missing}"], ["{missing}: no such file"]),
    ("synthesize", ["synthesize", "templates=[aime-v2]"], ["'aime-v2' is not a known synthesis template",
                                                          "did you mean 'aime-v1'"]),
    ("gate", ["gate", "steps=[dedup, agreemnt]"], ["'agreemnt' is not a known gate", "did you mean 'agreement'"]),
    ("curate", ["curate", "--config", "{bad_step}"],
     ["{bad_step}:1: steps: unknown curation step 'dedupe'", "did you mean 'dedup'"]),
    ("select", ["select", "--selectors", "corect"], ["--selectors: unknown selector 'corect'"]),
    ("select", ["select", "--selectors", "max_per_problem:x"], ["selector 'max_per_problem': needs a positive integer"]),
    ("train", ["train", "--method", "lorra"], ["--method: 'lorra' is not a known training method",
                                               "did you mean 'lora'"]),
    ("train", ["train", "--data", "{bad_json}", "--out", "{run_dir}/ckpt"], ["{bad_json}:2: malformed JSON"]),
    ("eval", ["eval", "--model", HUB_ID, "--benchmark", "{problems}", "--out", "{run_dir}/e"],
     [f"--model: model '{HUB_ID}': not a local folder and not in the Hugging Face cache", "HF_HUB_OFFLINE"]),
    ("eval", ["eval", "--benchmark", "nobench"], ["--benchmark: unknown benchmark 'nobench'"]),
    ("serve", ["serve", "--port", "99999"], ["--port: must be 0..65535, got 99999"]),
    ("report", ["report", "{missing}"], ["{missing}: no manifest.json"]),
    ("study", ["study", "nope"], ["unknown study 'nope'"]),
    ("study", ["study", "sampling", "task=gsm8k-test", "run_dir={run_dir}"],
     ["override 'task=gsm8k-test': 'gsm8k-test' must be a reasoning-gym task"]),
    ("study", ["study", "curation", "train.method=lorra", "run_dir={run_dir}"],
     ["override 'train.method=lorra': 'lorra' is not a known training method"]),
    ("study", ["study", "selection", "gradient.warmup_fraction=2", "run_dir={run_dir}"],
     ["override 'gradient.warmup_fraction=2': must be in (0, 1], got 2.0"]),
    ("quickstart", ["quickstart", "train.method=lorra", "run_dir={run_dir}"],
     ["override 'train.method=lorra': 'lorra' is not a known training method"]),
    ("quickstart", ["quickstart", "eval.template=boxd-v1", "run_dir={run_dir}"],
     ["override 'eval.template=boxd-v1': is set by the pipeline"]),
    ("quickstart", ["quickstart", "select.selectors=[correct, 'random:0']", "run_dir={run_dir}"],
     ["selector 'random': needs a positive integer"]),
    ("quickstart", ["quickstart", "--model", HUB_ID, "run_dir={run_dir}"], [f"--model: model '{HUB_ID}'"]),
    ("quickstart", ["quickstart", "task_kwargs.max_termz=3", "run_dir={run_dir}"],
     ["override 'task_kwargs.max_termz=3': rg:chain_sum: bad task_kwargs"]),
    ("run", ["run", "{bad_recipe}", "run_dir={run_dir}"],
     ["{bad_recipe}:5: train.method: 'lorra' is not a known training method"]),
    ("run", ["run", "{bad_pipeline}"], ["{bad_pipeline}:2: unknown pipeline 'quickstrt'"]),
    ("run", ["run", "{missing}"], ["{missing}: no such file"]),
]


@pytest.mark.parametrize("command, argv, fragments", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_naming_the_culprit(command, argv, fragments, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    rc = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("assay: error: "), err
    for f in fragments:
        assert f.format(**files) in lines[0]
    assert "Traceback" not in err
    # Nothing ran: a pipeline stopped before its first stage creates no run directory.
    assert not Path(files["run_dir"]).exists()


def test_every_command_has_a_bad_input():
    assert {c for c, _, _ in CASES} == set(COMMANDS)


def test_unknown_command_is_one_line(capsys):
    assert main(["smaple"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("assay: error: argument COMMAND: invalid choice: 'smaple'")


def test_hub_id_unreachable_names_the_spec_offline_and_without_network(monkeypatch):
    from assay import models
    from assay.core.io import InputError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models._check_hub_id.cache_clear()
    with pytest.raises(InputError, match=f"model '{HUB_ID}': not a local folder.*HF_HUB_OFFLINE is set"):
        models.resolve(HUB_ID)

    # Online but the hub cannot be reached: the hub client's connection error becomes one line.
    import huggingface_hub

    def unreachable(*a, **kw):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    models._check_hub_id.cache_clear()
    with pytest.raises(InputError, match=rf"model '{HUB_ID}': .*the hub could not be reached \(ConnectionError: "
                                         r"\[Errno -2\] Name or service not known\)"):
        models.resolve(HUB_ID)

    def missing(*a, **kw):
        from huggingface_hub.errors import RepositoryNotFoundError

        exc = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response
        Exception.__init__(exc, "404 Client Error")
        raise exc

    monkeypatch.setattr(huggingface_hub, "model_info", missing)
    models._check_hub_id.cache_clear()
    with pytest.raises(InputError, match=f"model '{HUB_ID}': no such local folder, and the hub has no model"):
        models.resolve(HUB_ID)
    models._check_hub_id.cache_clear()


def test_recipe_with_a_typo_in_a_late_section_fails_before_the_first_stage(tmp_path, capsys):
    """The quickstart's train section is used by its 8th stage; the typo stops the run at once."""
    from assay.core.io import InputError
    from assay.studies.quickstart import QuickstartConfig, run

    cfg = QuickstartConfig(run_dir=str(tmp_path / "qs"))
    cfg.train.method = "lorra"
    with pytest.raises(InputError, match="train.method: 'lorra' is not a known training method"):
        run(cfg)
    assert not (tmp_path / "qs").exists()
