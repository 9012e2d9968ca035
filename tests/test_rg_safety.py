"""Model-written answers are never executed: the reasoning-gym audit, assay's own scorers, the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assay.core.io import InputError
from assay.core.records import Problem, Sample
from assay.verify import rg as verify_rg
from assay.verify import sandbox
from assay.verify.stage import VerifyConfig, verify_samples
from assay.verify.verifiers import VERIFIERS, ReasoningGymVerifier


def sample(pid: str, text: str, i: int = 0) -> Sample:
    return Sample(pid, i, "m", "t", text, 1, 1, 1.0, "stop", {}, i)


def cfg(**kw) -> VerifyConfig:
    kw.setdefault("workers", 2)
    kw.setdefault("timeout_s", 10.0)
    return VerifyConfig(problems="p.jsonl", samples="s.jsonl", out="v.jsonl", **kw)


def rg_problem(task: str, pid: str, entry: dict) -> Problem:
    return Problem(pid, entry["question"], str(entry["answer"]), f"reasoning_gym:{task}",
                   {"rg_task": task, "rg_entry": json.dumps(entry, default=str)})


def accepted_tasks() -> list[str]:
    return sorted(t for t, row in verify_rg.audit().items() if row["status"] != "refused")


# ------------------------------------------------------------------------------ the audit table


def test_audit_covers_exactly_the_installed_reasoning_gym_tasks():
    import reasoning_gym

    installed, audited = set(reasoning_gym.factory.DATASETS), set(verify_rg.audit())
    assert installed - audited == set(), f"audit these new reasoning-gym tasks: {sorted(installed - audited)}"
    assert audited - installed == set(), f"the audit names tasks reasoning-gym no longer has: {sorted(audited - installed)}"
    assert set(verify_rg.OWN_SCORERS) == {t for t, r in verify_rg.audit().items() if r["status"] == "own"}


def test_tasks_known_to_execute_answers_are_never_scored_by_reasoning_gym():
    # Each of these passes the answer (or the problem text) to eval or sympy.parse_expr.
    for task in ("binary_matrix", "string_insertion", "spiral_matrix", "n_queens", "countdown", "puzzle24",
                 "polynomial_multiplication", "simple_integration", "intermediate_integration",
                 "bitwise_arithmetic", "number_sorting"):
        assert verify_rg.policy(task)[0] == "own", task


def test_refused_and_unaudited_tasks_stop_before_anything_runs(monkeypatch, tmp_path, capsys):
    with pytest.raises(ValueError, match="'composite' is refused: scores by delegating"):
        ReasoningGymVerifier().check(Problem("c", "q", "1", "t", {"rg_task": "composite", "rg_entry": '{"answer": "1"}'}))
    monkeypatch.setattr(verify_rg, "audit", lambda: {})
    with pytest.raises(ValueError, match="chain_sum' is refused: not in assay's scorer audit"):
        verify_rg.check_task("chain_sum")
    p = Problem("c", "q", "1", "t", {"rg_task": "chain_sum", "rg_entry": '{"question": "q", "answer": "1"}'})
    with pytest.raises(InputError, match="problem 'c' cannot be judged by reasoning_gym: .*not in assay's scorer audit"):
        verify_samples([p], [sample("c", "1")], cfg())


def test_the_cli_refuses_a_refused_task_with_exit_2(tmp_path, capsys):
    from assay.cli import main

    entry = {"question": "q", "answer": "1", "metadata": {}}
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "c", "question": "q", "answer": "1", "source": "t",
                                                  "meta": {"rg_task": "composite", "rg_entry": json.dumps(entry)}}) + "\n")
    (tmp_path / "s.jsonl").write_text(json.dumps(sample("c", "1").__dict__) + "\n")
    rc = main(["verify", "--problems", str(tmp_path / "p.jsonl"), "--samples", str(tmp_path / "s.jsonl"),
               "--out", str(tmp_path / "v.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "'composite' is refused" in err and "Traceback" not in err
    assert not (tmp_path / "v.jsonl").exists() or (tmp_path / "v.jsonl").read_text() == ""


# ------------------------------------------------------------------------------ malicious answers

_PROBE = textwrap.dedent("""
    import json, os, sys
    marker = sys.argv[1]
    events = []
    def hook(event, args):
        if event == "compile":
            src = args[0].decode("utf-8", "replace") if isinstance(args[0], bytes) else args[0]
            if isinstance(src, str) and marker in src:
                events.append("compiled: " + src[:80])
        elif event in ("open", "os.system", "subprocess.Popen") and marker in str(args[:1]):
            events.append(event + ": " + str(args[:2])[:80])
    import reasoning_gym
    from assay.verify import rg as verify_rg
    sys.addaudithook(hook)  # records only: this probes the audit itself, without the sandbox
    report = {}
    for task, entries, payloads in json.load(open(sys.argv[2])):
        events.clear()
        scores = []
        for entry in entries:
            for p in payloads:
                try:
                    scores.append(verify_rg.score(task, p, entry))
                except Exception:
                    scores.append(None)
        report[task] = {"events": sorted(set(events)), "full": sum(s == 1.0 for s in scores), "n": len(scores)}
    print(json.dumps(report))
""")


def payloads(path: Path, answer: str) -> list[str]:
    code = f"open({str(path)!r},'w').write('1')"
    shell = f"__import__('os').system('touch {path}')"
    first = answer.splitlines()[0] if answer.strip() else "1"
    return [code, shell, f"[{code}]", f"[[{code}]]", f"1 + {code}", f"(lambda: {code})()", f"x; {code}",
            f"{{'a': {code}}}", f"{answer} + {code}", f"{answer}\n{code}", f"{code}\n{answer}",
            f"[{', '.join(repr(t) for t in answer.split()[:8])}, {code}]", first.replace(first[:1], code, 1),
            f"{code} if 1 else {answer}", f"{shell} or {answer}"]


def _entries(task: str, n: int, seed: int = 7) -> list[dict]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset(task, size=n, seed=seed)
    return [json.loads(json.dumps(ds[i], default=str)) for i in range(n)]  # as stored in a Problem file


def test_a_malicious_answer_runs_no_code_in_any_accepted_task(tmp_path):
    """Every accepted task's scoring path, probed with code-shaped answers and no sandbox: nothing compiles them."""
    target = tmp_path / "pwned_marker_file"
    jobs = []
    for task in accepted_tasks():
        entries = _entries(task, 2)
        jobs.append([task, entries, sorted({p for e in entries for p in payloads(target, str(e["answer"]))})])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "probe.py").write_text(_PROBE)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), target.name, str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == set(accepted_tasks())
    executed = {t: r["events"] for t, r in report.items() if r["events"]}
    assert executed == {}, f"model text reached the interpreter: {executed}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.json", "probe.py"]


def test_the_probe_detects_an_executing_scorer(tmp_path):
    """The probe above can fail: reasoning-gym's own countdown scorer executes the same payloads."""
    target = tmp_path / "pwned_marker_file"
    entries = _entries("countdown", 1)
    script = _PROBE.replace("verify_rg.score(task, p, entry)", "reasoning_gym.get_score_answer_fn(task)(p, entry)")
    (tmp_path / "jobs.json").write_text(json.dumps([["countdown", entries, payloads(target, entries[0]["answer"])]]))
    (tmp_path / "probe.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), target.name, str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["countdown"]["events"] and target.exists()


def test_malicious_completions_through_the_verify_stage_write_nothing(tmp_path):
    """The real path (extraction, worker pool, sandbox) on the tasks whose scorers used to execute answers."""
    target = tmp_path / "pwned_marker_file"
    problems, samples = [], []
    for task in sorted(verify_rg.OWN_SCORERS) + ["chain_sum", "basic_arithmetic"]:
        for j, entry in enumerate(_entries(task, 1)):
            pid = f"{task}-{j}"
            problems.append(rg_problem(task, pid, entry))
            for i, p in enumerate(payloads(target, str(entry["answer"]))):
                samples.append(sample(pid, f"Thinking.\n<answer>{p}</answer>", i))
    problems.append(Problem("math", "q", "2", "t"))  # Math-Verify's path: the same answers, boxed
    samples += [sample("math", f"So \\boxed{{{p}}}. The answer is {p}", i) for i, p in enumerate(payloads(target, "2"))]
    verdicts = verify_samples(problems, samples, cfg())
    assert len(verdicts) == len(samples)
    # (Math-Verify is lenient: "<code> or 2" reads as 2. Leniency is not execution.)
    assert [(v.problem_id, v.extracted) for v in verdicts if v.correct and v.problem_id != "math"] == []
    assert [v.error for v in verdicts if v.problem_id == "math" and v.status != "ok"] == []
    assert [v for v in verdicts if v.status == "timeout"] == []
    assert not target.exists() and sorted(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ own scorers = reasoning-gym's


def _benign_variants(task: str, entry: dict) -> list[str]:
    a = str(entry["answer"])
    out = [a, a + " ", " " + a, a.upper(), a.replace(" ", ""), "", "0", "1 + 1", a + "0", a[:-1]]
    if task in ("spiral_matrix", "string_insertion", "binary_matrix"):
        out += [repr(a.split()), repr(list(a)), "\n" + a + "\n"]
    if task == "n_queens":
        out += [repr([row.split() for row in a.splitlines()]), a.replace("Q", "_", 1)]
    if task == "bitwise_arithmetic":
        v = int(a, 0)
        out += [str(v), hex(v), hex(v + 1), bin(v), a.upper().replace("0X", "0x")]
    if task == "number_sorting":
        nums = json.loads(a.replace("'", '"'))
        out += [json.dumps(nums), json.dumps([float(x) for x in nums]), json.dumps(nums[::-1]),
                json.dumps([float(x) + 0.5 for x in nums]), json.dumps(nums[:-1])]
    if task in ("countdown", "puzzle24"):
        out += [a.replace("+", "-", 1), a.replace(" ", ""), f"({a})", f"{a} + 0", f"{a} * 1", a.replace("*", "/", 1)]
    if task == "polynomial_multiplication":
        out += [entry["metadata"].get("polynomial_expr", a), a.replace("x", "y"), a.replace("**", "^")]
    if task in ("simple_integration", "intermediate_integration"):
        base = a.replace("+ C", "").strip()
        out += [base, base + " + 5", base + " + C", f"2*({base})", a.replace("x", "t")]
    return out


@pytest.mark.parametrize("task", sorted(verify_rg.OWN_SCORERS))
def test_own_scorer_gives_full_credit_exactly_when_reasoning_gym_does(task):
    import reasoning_gym

    rg = reasoning_gym.get_score_answer_fn(task)
    entries = _entries(task, 12, seed=3)
    full = 0
    for entry in entries:
        for answer in _benign_variants(task, entry):
            want = rg(answer, entry) == 1.0  # benign text: safe to give to reasoning-gym here
            got = verify_rg.score(task, answer, entry) == 1.0
            assert got == want, f"{task}: {answer!r} (reference {entry['answer']!r}): assay {got}, reasoning-gym {want}"
            full += want
    assert full >= len(entries), "the reference answers themselves must score full credit"


# ------------------------------------------------------------------------------ the sandbox


class EvilVerifier:
    """Test-only: a scorer that executes the answer, the slip the sandbox exists for."""

    name = "test-evil"

    def __init__(self, extractors):
        self.extractors = extractors

    def verify(self, problem: Problem, completion: str):
        if problem.answer == "swallow":
            try:
                eval(completion)
            except Exception:
                pass
            return None, False
        if problem.answer == "write":
            open(completion, "w").write("1")
        if problem.answer == "env":
            return json.dumps(sorted(os.environ)), False
        if problem.answer == "network":
            import socket

            socket.create_connection(("127.0.0.1", 9), timeout=1)
        return None, bool(eval(completion))


VERIFIERS.add("test-evil", EvilVerifier)


def test_the_sandbox_stops_a_scorer_that_executes_the_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-test-secret")
    target = tmp_path / "pwned"
    code = f"open({str(target)!r}, 'w').write('1')"
    problems = [Problem(a, "q", a, "t") for a in ("eval", "swallow", "write", "env", "network", "fine")]
    samples = [sample("eval", code), sample("swallow", code), sample("write", str(target)), sample("env", "x"),
               sample("network", "x"), sample("fine", "1 + 1")]
    v = {s.problem_id: s for s in verify_samples(problems, samples, cfg(verifier="test-evil"))}
    assert not target.exists()
    for pid in ("eval", "swallow"):
        assert v[pid].status == "error" and "blocked compile of Python source" in v[pid].error, v[pid]
    assert v["write"].status == "error" and "for writing" in v["write"].error
    assert v["network"].status == "error" and "blocked socket." in v["network"].error
    env = json.loads(v["env"].extracted)
    assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env and "PATH" in env
    # Plain arithmetic in eval compiles too, so even a harmless-looking eval is refused, never run.
    assert v["fine"].status == "error" and not v["fine"].correct


def test_the_sandbox_allows_what_scoring_needs_and_nothing_else(tmp_path):
    assert sandbox._is_safe_source("Integer (12 )+Float ('0.5' )*Symbol ('x' )**Integer (2 )")
    assert sandbox._is_safe_source("from sympy import *") and sandbox._is_safe_source("E ")
    for bad in ("open ('x' )", "Integer (1 ).__class__", "__import__ ('os' )", "Symbol ('x' );Integer (1 )",
                "Integer (1 )\nopen", "lambda :Integer (1 )", "Float ('0.5'  )[0]"):
        assert not sandbox._is_safe_source(bad), bad
    readable = tmp_path / "r.txt"
    readable.write_text("ok")
    with sandbox.guarded():
        assert readable.read_text() == "ok"  # reading is fine
        import fractions  # noqa: F401  (imports are fine)
    for action in (lambda: eval("1 + 1"), lambda: open(tmp_path / "w.txt", "w"), lambda: os.system("true"),
                   lambda: os.remove(readable)):
        with pytest.raises(sandbox.SandboxViolation):
            with sandbox.guarded():
                action()
    assert readable.exists() and not (tmp_path / "w.txt").exists()
    assert eval("1 + 1") == 2  # outside a guarded block nothing is changed


def test_secret_looking_variables_are_scrubbed():
    env = {"PATH": "/bin", "OPENAI_API_KEY": "a", "HF_TOKEN": "b", "AWS_SECRET_ACCESS_KEY": "c",
           "HTTPS_PROXY": "http://u:p@h", "MY_PASSWORD": "d", "LANG": "C", "HOME": "/root"}
    removed = sandbox.scrub_environment(env)
    assert sorted(env) == ["HOME", "LANG", "PATH"] and len(removed) == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_worker_fork_server_starts_without_the_parents_secrets(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import os
        from pathlib import Path
        from assay.core.records import Problem, Sample
        from assay.verify.stage import VerifyConfig, verify_samples
        if __name__ == "__main__":
            p = [Problem("t", "q", "1", "t")]
            s = [Sample("t", 0, "m", "t", "\\\\boxed{1}", 0, 0, 0.0, "stop", {}, 0)]
            assert verify_samples(p, s, VerifyConfig("p", "s", "o", workers=1))[0].correct
            assert os.environ["OPENAI_API_KEY"] == "sk-parent-secret"  # restored in the parent
            me = str(os.getpid())
            kids = [d for d in os.listdir("/proc") if d.isdigit() and
                    Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1] == me]
            envs = [Path(f"/proc/{k}/environ").read_bytes() for k in kids
                    if b"forkserver" in Path(f"/proc/{k}/cmdline").read_bytes()]
            print(len(envs), any(b"sk-parent-secret" in e for e in envs))
    """))
    env = {**os.environ, "OPENAI_API_KEY": "sk-parent-secret"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "False"]
