"""``--executor ray``: sampling shards as Ray tasks on a local cluster started by the test.

(a) the merged output equals the in-process output record for record; (b) a worker killed with
SIGKILL mid-shard is retried by Ray and the output is the same, with no loss and no duplicates;
(c) a driver killed mid-run and rerun resumes its shards and ends with the same output.
The tiny random model in fp32: per-sample seeds make each draw independent of its batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'assay[ray]')")

from assay.core.io import InputError, read_records, write_records  # noqa: E402
from assay.core.records import Problem, Sample  # noqa: E402
from assay.sampling.runner import SampleConfig, run_sampling  # noqa: E402
from assay.sampling.sharded import run_sampling_on  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's ray command, on PATH or not


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster on loopback (``ray start --head``), shared by the module's tests."""
    import socket

    tmp = tmp_path_factory.mktemp("ray")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([RAY, "start", "--head", "--port", port, "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
                    "--include-dashboard", "false", "--temp-dir", str(tmp)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    yield address
    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _problems(path: Path, n: int) -> Path:
    write_records(path, [Problem(f"p{i}", f"What is {i} plus {2 * i}?", str(3 * i), "t") for i in range(n)])
    return path


def _cfg(tmp_path, model, out, **kw) -> SampleConfig:
    return SampleConfig(problems=str(tmp_path / "p.jsonl"), out=str(out), model=str(model), n=3, temperature=1.0,
                        max_new_tokens=24, max_batch=4, dtype="float32", **kw)


def _rows(path, flops: bool = True) -> dict:
    return {(s.problem_id, s.sample_index): (s.text, s.seed, s.completion_tokens) + ((s.flops,) if flops else ())
            for s in read_records(path, Sample)}


# After a kill, a group's remaining samples share its prompt's prefill among fewer samples, so
# their recorded FLOPs are (truthfully) higher than in an uninterrupted run; the draws are the same.


def _keys_once(path) -> list:
    lines = [json.loads(ln) for ln in Path(path).read_bytes().split(b"\n") if ln.strip()]
    keys = [(r["problem_id"], r["sample_index"]) for r in lines]
    assert len(keys) == len(set(keys))
    return keys


def test_ray_output_equals_the_in_process_output(cluster, tiny_model_dir, tmp_path):
    _problems(tmp_path / "p.jsonl", 10)
    local = tmp_path / "local.jsonl"
    run_sampling(_cfg(tmp_path, tiny_model_dir, local), progress=False)
    out = tmp_path / "ray.jsonl"
    summary = run_sampling_on(_cfg(tmp_path, tiny_model_dir, out, executor="ray",
                                   executor_options={"address": cluster, "workers": 2}), progress=False)
    assert summary["shards"] == 2 and summary["sampled"] == 30 and summary["merged"] == 30
    assert _rows(out) == _rows(local)
    # Merged in problem order then sample index, whatever order the shards finished in.
    assert _keys_once(out) == [(f"p{i}", j) for i in range(10) for j in range(3)]
    assert not Path(str(out) + ".shards").exists()  # the shard files it recorded are gone
    ident = json.loads(Path(str(out) + ".identity.json").read_text())["identity"]
    assert ident == json.loads(Path(str(local) + ".identity.json").read_text())["identity"]
    # A local run resumes the merged file (nothing left to do), and n=4 adds only the new draws.
    assert run_sampling(_cfg(tmp_path, tiny_model_dir, out), progress=False)["sampled"] == 0
    cfg4 = dataclasses.replace(_cfg(tmp_path, tiny_model_dir, out, executor="ray",
                                    executor_options={"address": cluster, "workers": 2}), n=4)
    more = run_sampling_on(cfg4, progress=False)
    assert more["sampled"] == 10 and len(_keys_once(out)) == 40


def test_bad_input_in_a_shard_is_the_stage_error_not_a_ray_traceback(cluster, tiny_model_dir, tmp_path, capsys):
    _problems(tmp_path / "p.jsonl", 4)
    from assay.cli import main

    assert main(["sample", "--problems", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                 "--model", str(tiny_model_dir), "--executor", "rya"]) == 2
    err = capsys.readouterr().err
    assert "--executor" in err and "did you mean 'ray'" in err and "Traceback" not in err
    with pytest.raises(InputError, match="executor_options.wokers.*did you mean 'workers'"):
        run_sampling_on(_cfg(tmp_path, tiny_model_dir, tmp_path / "o.jsonl", executor="ray",
                             executor_options={"wokers": 2}))
    with pytest.raises(InputError, match="the executor makes the shards"):
        run_sampling_on(_cfg(tmp_path, tiny_model_dir, tmp_path / "o.jsonl", executor="ray", shard="0/2",
                             executor_options={"address": cluster}))
    with pytest.raises(InputError, match="prompt template|template"):
        run_sampling_on(_cfg(tmp_path, tiny_model_dir, tmp_path / "o.jsonl", executor="ray", template="nope-v9",
                             executor_options={"address": cluster, "workers": 2}))


def test_errors_raised_inside_a_worker_arrive_as_themselves(cluster):
    from assay.core.config import ConfigError, parse_option_string
    from assay.core.executor import RayOptions, map_shards, parse_shard

    o = RayOptions(address=cluster)
    assert map_shards(o, parse_shard, ["1/3", "0/2"]) == [(1, 3), (0, 2)]
    with pytest.raises(InputError, match="expected 'i/N'"):
        map_shards(o, parse_shard, ["1/3", "9/3"])
    with pytest.raises(ConfigError) as exc:  # pickled by its fields, so it keeps its key
        map_shards(o, parse_option_string, ["novalue"])
    assert exc.value.key == "backend_options" and "expected key=value" in str(exc.value)


def _driver(tmp_path, model, out, cluster, tokens=200) -> list[str]:
    return [sys.executable, "-m", "assay.cli", "sample", "--problems", str(tmp_path / "p.jsonl"), "--out", str(out),
            "--model", str(model), "--n", "4", "--temperature", "1.0", "--max-new-tokens", str(tokens),
            "--max-batch", "2", "--dtype", "float32", "--executor", "ray",
            "--executor-options", f"address={cluster},workers=2"]


def _wait_for_lines(paths, at_least: int, proc, timeout=180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = sum(p.read_bytes().count(b"\n") for p in paths if p.exists())
        if n >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed; make the job longer")
        time.sleep(0.05)
    pytest.fail("no shard output appeared")


def _shard_files(out: Path) -> list[Path]:
    return sorted(Path(str(out) + ".shards").glob("*-of-*.jsonl"))


def _worker_pids() -> list[int]:
    """Ray worker processes running the shard task (Ray titles them after the function)."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in ps if "ray::_sample_shard" in line]


def _long_local_run(tmp_path, model) -> Path:
    """The reference for the kill tests: 8 problems x 4 samples of 200 tokens, in this process."""
    _problems(tmp_path / "p.jsonl", 8)
    local = tmp_path / "local.jsonl"
    run_sampling(SampleConfig(problems=str(tmp_path / "p.jsonl"), out=str(local), model=str(model), n=4,
                              temperature=1.0, max_new_tokens=200, max_batch=2, dtype="float32"), progress=False)
    return local


def test_a_worker_killed_mid_shard_is_retried_without_loss_or_duplicates(cluster, tiny_model_dir, tmp_path):
    local = _long_local_run(tmp_path, tiny_model_dir)
    out = tmp_path / "ray.jsonl"
    proc = subprocess.Popen(_driver(tmp_path, tiny_model_dir, out, cluster), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_for_lines([Path(str(out) + ".shards") / f"{i:04d}-of-0002.jsonl" for i in range(2)],
                    3, proc)
    pids = _worker_pids()
    assert pids, "no Ray worker running the shard task was found"
    os.kill(pids[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _keys_once(out) == [(f"p{i}", j) for i in range(8) for j in range(4)]
    assert _rows(out, flops=False) == _rows(local, flops=False)


def test_a_killed_driver_resumes_its_shards(cluster, tiny_model_dir, tmp_path):
    local = _long_local_run(tmp_path, tiny_model_dir)
    out = tmp_path / "ray.jsonl"
    cmd = _driver(tmp_path, tiny_model_dir, out, cluster)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines([Path(str(out) + ".shards") / f"{i:04d}-of-0002.jsonl" for i in range(2)], 4, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Its tasks may outlive it for a moment; wait until none is left running before the rerun.
    deadline = time.time() + 60
    while _worker_pids() and time.time() < deadline:
        time.sleep(0.2)
    partial = sum(p.read_bytes().count(b"\n") for p in _shard_files(out))
    assert 0 < partial < 32 and not read_records(out, Sample)  # nothing merged yet
    # Another shard count would mix partitions: refused, naming the plan.
    bad = cmd[:-1] + [f"address={cluster},workers=3"]
    r = subprocess.run(bad, capture_output=True, text=True)
    assert r.returncode == 2 and "started with 2 shards" in r.stderr and "Traceback" not in r.stderr
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _keys_once(out) == [(f"p{i}", j) for i in range(8) for j in range(4)]
    assert _rows(out, flops=False) == _rows(local, flops=False)


def test_eval_sampling_runs_on_ray_with_the_same_result(cluster, tiny_model_dir, tmp_path):
    from assay.eval.stage import EvalConfig, run_eval

    bench = _problems(tmp_path / "bench.jsonl", 6)
    base = dict(model=str(tiny_model_dir), benchmark=str(bench), max_new_tokens=8, n=2, dtype="float32")
    local = run_eval(EvalConfig(out=str(tmp_path / "local"), **base))
    on_ray = run_eval(EvalConfig(out=str(tmp_path / "ray"), executor="ray",
                                 executor_options={"address": cluster, "workers": 2}, **base))
    # Where the shards ran is not part of the protocol: the two results compare as one protocol.
    assert on_ray["protocol"] == local["protocol"] and on_ray["metrics"] == local["metrics"]
    assert _rows(tmp_path / "ray" / "sampled.samples.jsonl") == _rows(tmp_path / "local" / "sampled.samples.jsonl")


def test_verify_on_ray_writes_the_local_file_byte_for_byte_and_resumes_a_local_one(cluster, tmp_path):
    from assay.verify.stage import VerifyConfig, run_verify

    probs = [Problem(f"p{i}", f"What is {i} plus {i}?", str(2 * i), "t") for i in range(9)]
    write_records(tmp_path / "p.jsonl", probs)
    samples = [Sample(problem_id=p.id, sample_index=j, model="m", prompt_template="boxed-v1",
                      text=f"so \\boxed{{{2 * i + (j % 2)}}}", prompt_tokens=1, completion_tokens=1, flops=0.0,
                      finish_reason="stop", decoding={}, seed=j) for i, p in enumerate(probs) for j in range(3)]
    write_records(tmp_path / "s.jsonl", samples)
    base = dict(problems=str(tmp_path / "p.jsonl"), samples=str(tmp_path / "s.jsonl"), workers=1)
    local = run_verify(VerifyConfig(out=str(tmp_path / "local.jsonl"), **base), progress=False)
    ray_opts = {"address": cluster, "workers": 2}
    on_ray = run_verify(VerifyConfig(out=str(tmp_path / "ray.jsonl"), executor="ray", executor_options=ray_opts,
                                     **base), progress=False)
    assert (on_ray.n, on_ray.correct) == (local.n, local.correct) == (27, 18)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert not (tmp_path / "ray.jsonl.shards").exists()
    # Half judged locally, the rest on Ray: the same file, no verdict twice.
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join((tmp_path / "local.jsonl").read_bytes().splitlines(keepends=True)[:13]))
    run_verify(VerifyConfig(out=str(part), executor="ray", executor_options=ray_opts, **base), progress=False)
    assert part.read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_judge_on_ray_writes_what_a_local_judge_writes(cluster, tiny_model_dir, tmp_path):
    from assay.core.records import Verdict
    from assay.verify.judge import JudgeConfig, run_judge

    probs = [Problem(f"p{i}", f"What is {i} plus {i}?", str(2 * i), "t") for i in range(5)]
    samples = [Sample(problem_id=p.id, sample_index=j, model="m", prompt_template="boxed-v1",
                      text=f"{i} + {i} = \\boxed{{{2 * i}}} (try {j})", prompt_tokens=1, completion_tokens=1,
                      flops=0.0, finish_reason="stop", decoding={}, seed=j) for i, p in enumerate(probs) for j in range(2)]
    verdicts = [Verdict(s.problem_id, s.sample_index, s.text, True, "exact") for s in samples]
    for name, rows in (("p", probs), ("s", samples), ("v", verdicts)):
        write_records(tmp_path / f"{name}.jsonl", rows)
    base = dict(problems=str(tmp_path / "p.jsonl"), samples=str(tmp_path / "s.jsonl"),
                verdicts=str(tmp_path / "v.jsonl"), model=str(tiny_model_dir), max_new_tokens=6,
                backend_options={"dtype": "float32"})
    local = run_judge(JudgeConfig(out=str(tmp_path / "local.jsonl"), **base))
    on_ray = run_judge(JudgeConfig(out=str(tmp_path / "ray.jsonl"), executor="ray",
                                   executor_options={"address": cluster, "workers": 2}, **base))
    assert on_ray.items == local.items == 10 and on_ray.fpr == local.fpr
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert len((tmp_path / "ray.jsonl.cache.jsonl").read_text().splitlines()) == 10
    assert not (tmp_path / "ray.jsonl.cache.jsonl.shards").exists()


def test_less_features_on_ray_equal_the_local_ones(cluster, tiny_model_dir, tmp_path):
    import numpy as np

    from assay.core.executor import RayOptions
    from assay.core.records import SFTExample
    from assay.select.gradients import gradient_scores
    from assay.train import LoraOptions, TrainConfig, run_training

    words = ["apple", "river", "stone", "cloud", "seven", "green", "house", "light"]
    pool = [SFTExample(f"e{i}", [{"role": "user", "content": f"What is {i} + {i}?"},
                                 {"role": "assistant", "content": " ".join(words[(i * j) % 8] for j in range(1, 7))}],
                       f"p{i}", 0, "m", "plain-v1", 6, "t") for i in range(10)]
    write_records(tmp_path / "warm.jsonl", pool[:4])
    run_training(TrainConfig(data=str(tmp_path / "warm.jsonl"), out=str(tmp_path / "warmup"), model=str(tiny_model_dir),
                             lora=LoraOptions(r=4, alpha=8), epochs=2, batch_size=4, save_steps=1, keep_checkpoints=0,
                             merge=False, seed=0, max_length=64, dtype="float32"), progress=False)
    args = (str(tiny_model_dir), pool, {"t": pool[2:4]}, tmp_path / "warmup", 256, 0, 64)
    local, cost_local = gradient_scores(*args, tmp_path / "f-local", progress=False)
    on_ray, cost_ray = gradient_scores(*args, tmp_path / "f-ray", progress=False,
                                       executor=RayOptions(address=cluster, workers=3))
    assert cost_ray == cost_local and cost_local["checkpoints"] == 2
    ck = sorted(p.name for p in (tmp_path / "f-local").glob("checkpoint-*.train.npy"))
    assert len(ck) == 2
    for name in ck:  # the assembled per-checkpoint stores, and no range files left behind
        assert np.array_equal(np.load(tmp_path / "f-ray" / name), np.load(tmp_path / "f-local" / name))
        assert not (tmp_path / "f-ray" / (name + ".shards")).exists()
    assert np.allclose(on_ray, local, rtol=0, atol=0)
