"""Run directories and lineage: what made each artifact, and which stages are already done.

A run directory holds the artifacts of one job and a ``manifest.json`` with, per stage: its
resolved config, its inputs and outputs with content hashes, the models it used, its FLOPs and
wall time, and the package versions of the process. Two uses:

- lineage: any number in a report can be traced to the exact files, config and models behind it;
- resume: a stage whose status is ``done``, whose config and input hashes are unchanged and whose
  outputs still hash the same is skipped on a rerun. A stage killed midway is rerun, and the
  stage functions themselves resume from their partial outputs (sampling, verification,
  training checkpoints), so no finished work is lost or done twice.

A stage redone because its config or inputs changed deletes only what it recorded as its own:
before it runs, the output paths that did not exist yet and the side files already beside them;
after it runs (or is interrupted), the exact files it created. Only files inside the run
directory are ever deleted; anything else standing where an output goes is refused, named.

The manifest is rewritten atomically after every stage transition, so a kill leaves it valid.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from assay.core.config import to_mapping
from assay.core.hardware import resolve_dtype
from assay.core.hashing import config_hash, hash_path
from assay.core.io import InputError, write_json
from assay.core.redact import redact_argv, redact_config

PACKAGES = ("assay", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "reasoning-gym",
            "math-verify", "numpy")


def package_versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def flops_of(path: str | Path) -> float:
    """FLOPs recorded inside an artifact: a training summary, an eval result, or Sample records."""
    path = Path(path)
    for name in ("train_summary.json", "result.json"):
        f = path / name if path.is_dir() else (path if path.name == name else None)
        if f is not None and f.exists():
            return float(json.loads(f.read_text(encoding="utf-8")).get("flops", 0.0))
    if path.is_file() and path.suffix == ".jsonl":
        total = 0.0
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if '"flops"' in line:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("flops"), (int, float)) and "text" in rec:
                        total += float(rec["flops"])
        return total
    return 0.0


def declared(cfg: Any) -> tuple[list[str], list[str], list[str]]:
    """(inputs, outputs, models) a stage config declares: its ``INPUTS`` fields that name existing
    paths (a list field names several; a model spec that is not a path is not a file input), its
    ``OUTPUTS`` fields, and its ``model``. The CLI's ``--run-dir`` and ``Run.stage`` both read a
    stage's lineage from here, so the two cannot record one stage differently."""
    inputs: list[str] = []
    for name in getattr(cfg, "INPUTS", ()):
        v = getattr(cfg, name)
        inputs += [str(p) for p in (v if isinstance(v, (list, tuple)) else [v]) if p and Path(p).exists()]
    outputs = [str(getattr(cfg, n)) for n in getattr(cfg, "OUTPUTS", ()) if getattr(cfg, n)]
    models = [str(cfg.model)] if getattr(cfg, "model", None) else []
    return inputs, outputs, models


def _unique(paths: Iterable[Any]) -> list:
    seen, out = set(), []
    for p in paths:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def concrete_dtypes(config: Any) -> Any:
    """``dtype: auto`` replaced by the dtype it resolves to on this machine (for that section's
    ``device``), everywhere in a stage config: a run directory moved to other hardware must not
    skip a stage made in bf16 and run the next one in fp32 under the same recorded config."""
    if isinstance(config, dict):
        out = {k: concrete_dtypes(v) for k, v in config.items()}
        if out.get("dtype") == "auto":
            out["dtype"] = resolve_dtype("auto", str(config.get("device") or "cpu"))
        return out
    if isinstance(config, list):
        return [concrete_dtypes(v) for v in config]
    return config


WHERE_IT_RAN = ("executor", "executor_options")
"""Config keys that say where a stage's shards ran, not what they computed (a Ray run writes
what a local run writes): left out of the config hash, so a stage done locally is not redone on
Ray (nor the reverse), and run directories made before these keys existed still resume."""


def _identity(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _identity(v) for k, v in config.items() if k not in WHERE_IT_RAN}
    if isinstance(config, list):
        return [_identity(v) for v in config]
    return config


class Run:
    """A run directory and its manifest."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "manifest.json"
        if self.path.exists():
            self.manifest = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.manifest = {"created": _now(), "argv": redact_argv(sys.argv), "packages": package_versions(),
                             "stages": {}}
            self._save()

    def _save(self) -> None:
        write_json(self.path, self.manifest)

    def file(self, name: str) -> str:
        return str(self.dir / name)

    def is_done(self, name: str, config: Any, inputs: Iterable[str | Path]) -> bool:
        """``config`` as :meth:`stage` records it (a mapping, ``dtype: auto`` made concrete)."""
        st = self.manifest["stages"].get(name)
        if not st or st.get("status") != "done" or st.get("config_hash") != config_hash(_identity(config)):
            return False
        want = {i["path"]: i["sha256"] for i in st.get("inputs", [])}
        if want != {str(p): hash_path(p)["sha256"] for p in inputs}:
            return False
        return all(Path(o["path"]).exists() and hash_path(o["path"])["sha256"] == o["sha256"]
                   for o in st.get("outputs", []))

    def stage(self, name: str, config: Any, fn: Callable[[], Any], inputs: Iterable[str | Path] = (),
              outputs: Iterable[str | Path] = (), models: Iterable[str] = (), extra: Optional[dict] = None) -> dict:
        """Run ``fn`` as stage ``name`` unless it is already done with the same config and inputs.

        ``config`` is the stage's identity. A stage config dataclass (``SampleConfig``, ``ProblemsConfig``,
        ...) also gives the stage's inputs, outputs and models (``declared``), so they cannot drift
        from what the stage reads and writes; ``inputs``, ``outputs`` and ``models`` add to them
        (side files, inputs a config names inside a nested field), and ``extra`` adds settings that
        are part of the identity but not of the config (a sampling budget). A plain mapping is the
        identity as given, with everything else explicit. Returns the stage's manifest entry
        (``summary`` holds what ``fn`` returned, if a dict or a dataclass).
        """
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            d_in, d_out, d_models = declared(config)
            inputs, outputs, models = [*d_in, *inputs], [*d_out, *outputs], [*d_models, *models]
            config = to_mapping(config)
        if extra:
            config = {**config, **extra}
        config = concrete_dtypes(config)
        inputs, outputs = [Path(p) for p in _unique(inputs)], [Path(p) for p in _unique(outputs)]
        models = _unique(models)
        if self.is_done(name, config, inputs):
            print(f"[assay] {name}: done already (inputs and config unchanged), skipped")
            return self.manifest["stages"][name]
        entry = {"status": "running", "started": _now(), "config": redact_config(config),
                 "config_hash": config_hash(_identity(config)),
                 "inputs": [hash_path(p) for p in inputs], "models": list(models)}
        prior = self.manifest["stages"].get(name, {})
        if prior and (prior.get("config_hash") != entry["config_hash"] or
                      {i["path"]: i["sha256"] for i in prior.get("inputs", [])} !=
                      {i["path"]: i["sha256"] for i in entry["inputs"]}):
            # Outputs made from another config or other inputs must not be resumed into: start clean.
            self._clear(name, prior, outputs)
            prior = {}
            print(f"[assay] {name}: config or inputs changed since its outputs were made; redoing it from scratch")
        # What this stage may delete later: recorded before it writes anything, so that even a
        # killed run leaves the record of which paths were not there before it started.
        entry["owns"] = prior.get("owns") or _claim(outputs)
        self.manifest["stages"][name] = entry
        self._save()
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException:
            entry["status"] = "interrupted"
            entry["wall_s"] = round(time.perf_counter() - t0, 3) + prior.get("wall_s_before", 0.0)
            entry["wall_s_before"] = entry["wall_s"]
            entry["owns"]["files"] = _owned_files(entry["owns"], outputs)
            self._save()
            raise
        entry["wall_s"] = round(time.perf_counter() - t0, 3) + prior.get("wall_s_before", 0.0)
        entry["owns"]["files"] = _owned_files(entry["owns"], outputs)
        entry.update(status="done", finished=_now(), outputs=[hash_path(p) for p in outputs if p.exists()],
                     flops=sum(flops_of(p) for p in outputs if p.exists()),
                     summary=_summary(result))
        entry.pop("wall_s_before", None)
        self._save()
        return entry

    def _clear(self, name: str, prior: dict, outputs: list[Path]) -> None:
        """Delete the files stage ``name`` recorded as its own, inside the run directory, and
        refuse (InputError) if anything else still stands where its outputs go."""
        owns = prior.get("owns")
        if owns is None:  # a manifest from before ownership was recorded: its exact output files
            owns = {"created": [o["path"] for o in prior.get("outputs", []) if Path(o["path"]).is_file()],
                    "siblings_before": {}, "files": [o["path"] for o in prior.get("outputs", [])
                                                      if Path(o["path"]).is_file()]}
        if prior.get("status") == "running":  # killed before it could record its files
            owns = {**owns, "files": _owned_files(owns, outputs)}
        root = self.dir.resolve()
        for f in owns.get("files", []):
            path = Path(f)
            if path.is_file() and path.resolve().is_relative_to(root):
                path.unlink()
        created = {str(Path(c)) for c in owns.get("created", [])}
        for out in outputs:
            if out.is_dir() and str(out) in created and out.resolve().is_relative_to(root):
                for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    if not any(d.iterdir()):
                        d.rmdir()
                if not any(out.iterdir()):
                    out.rmdir()
            if out.exists():
                raise InputError(f"{out}: stands where stage '{name}' writes its output, and was not written by it "
                                 "(or lies outside the run directory); stage redone because its config or inputs "
                                 "changed. Move it away or choose another output path; assay does not delete it")

    def totals(self) -> dict:
        st = self.manifest["stages"].values()
        return {"flops": sum(s.get("flops", 0.0) for s in st), "wall_s": sum(s.get("wall_s", 0.0) for s in st)}


def _siblings(out: Path) -> list[str]:
    """Files written beside an output (<out>.config.yaml, .rejected.jsonl, .all.jsonl, ...)."""
    return sorted(str(p) for p in out.parent.glob(glob.escape(out.name) + ".*") if p.is_file())


def _claim(outputs: list[Path]) -> dict:
    """Before a stage runs: which output paths it will create, and which side files already exist."""
    return {"created": [str(p) for p in outputs if not p.exists()],
            "siblings_before": {str(p): _siblings(p) for p in outputs}, "files": []}


def _owned_files(owns: dict, outputs: list[Path]) -> list[str]:
    """The exact files a stage wrote: outputs it created (a folder's files included) and the side
    files that appeared beside its outputs while it ran."""
    files = set(owns.get("files", []))
    created = set(owns.get("created", []))
    for out in outputs:
        if str(out) in created:
            if out.is_file():
                files.add(str(out))
            elif out.is_dir():
                files.update(str(p) for p in out.rglob("*") if p.is_file())
        before = set(owns.get("siblings_before", {}).get(str(out), []))
        files.update(f for f in _siblings(out) if f not in before)
    return sorted(files)


def _summary(result: Any) -> Optional[dict]:
    # A stage's typed result (a dataclass) is recorded like the dicts older stage functions return.
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return json.loads(json.dumps(dataclasses.asdict(result), default=str))
    return result if isinstance(result, dict) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
