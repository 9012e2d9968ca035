"""The command table, stage identity in run directories, and the study workspace (issue 12, items 2-4)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from assay import commands
from assay.core.config import opt
from assay.core.io import InputError, read_records
from assay.core.records import Problem
from assay.core.runs import Run


def test_one_table_feeds_help_studies_and_recipes():
    from assay import cli

    assert set(cli.COMMANDS) == set(commands.top_level())
    assert set(commands.studies()) == {"sampling", "curation", "selection", "cft", "synthesis"}
    assert set(commands.pipelines()) == {"quickstart", "study-sampling", "study-curation", "study-selection",
                                         "study-cft", "study-synthesis"}
    for c in list(commands.top_level().values()) + list(commands.studies().values()):
        mod = c.load()
        assert hasattr(mod, c.config) and callable(getattr(mod, c.run)), c.name
        if c.kind == "stage" and c.name != "report":  # report has no settings to check
            assert callable(getattr(mod, "check", None)), c.name  # each stage checks its own config


def test_core_checks_imports_no_stage_module():
    import ast
    from pathlib import Path

    import assay.core.checks as checks

    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    stage_modules = {c.module for c in commands.top_level().values()}
    assert not imported & stage_modules


def test_heldout_of_a_generation_stage_is_redone_when_its_task_changes(tmp_path):
    """The sampling study's held-out set was keyed on {seed, size}: another task reused the old set."""
    from assay.studies.workspace import problem_set, rg_config

    r = Run(tmp_path / "r")
    held = tmp_path / "r" / "heldout.jsonl"
    problem_set(r, "heldout", [rg_config(held, "rg:chain_sum", {}, 10_000, 5)])
    assert {p.source for p in read_records(held, Problem)} == {"reasoning_gym:chain_sum"}
    problem_set(r, "heldout", [rg_config(held, "rg:basic_arithmetic", {}, 10_000, 5)])
    assert {p.source for p in read_records(held, Problem)} == {"reasoning_gym:basic_arithmetic"}
    entry = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["heldout"]
    assert entry["config"]["source"] == "rg:basic_arithmetic" and entry["outputs"][0]["path"] == str(held)


def test_run_stage_derives_lineage_from_the_config(tmp_path):
    from assay.verify.stage import VerifyConfig

    (tmp_path / "p.jsonl").write_text("")
    (tmp_path / "s.jsonl").write_text("")
    cfg = VerifyConfig(problems=str(tmp_path / "p.jsonl"), samples=str(tmp_path / "s.jsonl"),
                       out=str(tmp_path / "v.jsonl"))
    r = Run(tmp_path / "r")
    e = r.stage("verify", cfg, lambda: (tmp_path / "v.jsonl").write_text("x") and None,
                outputs=[str(tmp_path / "v.jsonl.config.yaml")])
    assert [i["path"] for i in e["inputs"]] == [cfg.problems, cfg.samples]
    assert [o["path"] for o in e["outputs"]] == [cfg.out] and e["models"] == []
    assert e["config"]["out"] == cfg.out


@pytest.mark.parametrize("study, setting", [
    ("curation", "train.data=x.jsonl"), ("curation", "eval.benchmark=gsm8k-test"),
    ("selection", "gradient.n=3"), ("sampling", "train.model=other"), ("cft", "eval.model=x"),
    ("synthesis", "train.data=x.jsonl"), ("synthesis", "distill.model=x"),
])
def test_studies_refuse_fields_they_own(study, setting, tmp_path, capsys):
    from assay.cli import main

    assert main(["study", study, setting, f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"override '{setting}': is set by the study" in err
    assert not (tmp_path / "r").exists()


def test_sampling_study_old_names_still_work():
    from assay.core.config import from_mapping
    from assay.core.config import parse_overrides as po
    from assay.studies.sampling import StudySamplingConfig

    cfg = from_mapping(StudySamplingConfig, po(["problems=7", "heldout=3", "train=true", "student_train.lr=1e-3"]))
    assert (cfg.pool_size, cfg.heldout_size, cfg.students, cfg.train.lr) == (7, 3, True, 1e-3)
    with pytest.raises(InputError, match="old name of 'pool_size'"):
        from_mapping(StudySamplingConfig, po(["problems=7", "pool_size=8"]))


# ---- a new study is one module (here: this one) plus one registry line ----

@dataclass
class TinyStudyConfig:
    task: str = opt("rg:chain_sum", help="task")
    heldout_size: int = opt(4, help="held-out rows")
    pool_size: int = opt(6, help="pool rows")
    seed: int = opt(0, help="pool seed")
    run_dir: str = opt("runs/tiny", help="where everything goes")


def check(cfg: TinyStudyConfig) -> None:
    from assay.studies.workspace import check_disjoint

    check_disjoint({"pool": ("seed", cfg.seed, cfg.seed + cfg.pool_size),
                    "held-out": ("heldout_size", 10_000, 10_000 + cfg.heldout_size)})


def run(cfg: TinyStudyConfig) -> dict:
    from assay.studies.workspace import heldout_and_pool, open_run

    check(cfg)
    r = open_run(cfg)
    held, pool = heldout_and_pool(r, cfg.task, {}, 10_000, cfg.heldout_size, cfg.seed, cfg.pool_size)
    out = {"heldout": len(read_records(held, Problem)), "pool": len(read_records(pool, Problem))}
    (r.dir / "report.md").write_text(format_report(out))
    return out


def format_report(results: dict) -> str:
    return f"tiny study: {results['pool']} pool problems, {results['heldout']} held out"


@pytest.fixture
def tiny_study():
    cmd = commands.register(commands.Command("tiny", __name__, "TinyStudyConfig", "a tiny study", kind="study",
                                             run="run", own_run_dir=True))
    yield cmd
    commands.unregister(cmd)


def test_a_registered_study_runs_through_assay_study_and_assay_run(tiny_study, tmp_path, capsys):
    from assay.cli import main
    from assay.core.config import load_yaml

    run_dir = tmp_path / "t"
    assert main(["study", "tiny", "pool_size=5", f"run_dir={run_dir}"]) == 0
    assert "tiny study: 5 pool problems, 4 held out" in capsys.readouterr().out
    saved = load_yaml(run_dir / "recipe.yaml")
    assert saved["pipeline"] == "study-tiny" and saved["pool_size"] == 5
    assert main(["run", str(run_dir / "recipe.yaml"), "pool_size=3"]) == 0
    assert "tiny study: 3 pool problems" in capsys.readouterr().out
    assert main(["study", "tiny", "seed=9998", f"run_dir={run_dir}"]) == 2
    assert "overlap held-out seeds" in capsys.readouterr().err
