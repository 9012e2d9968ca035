"""What a verify worker may do while it judges model-written text: nothing but compute.

Scorers are third-party code (reasoning-gym's, Math-Verify's) fed text a model wrote, and some of
them were written to ``eval`` it. assay's first defence is the audit in ``assay.verify.rg``: a
task whose scorer executes the answer is scored by assay's own parser or refused. This module is
the second defence, for the slip the audit missed: while a worker runs a scorer, a Python audit
hook (PEP 578) refuses

- compiling any Python source that is not a file being imported, except the one shape Math-Verify's
  LaTeX parser needs (sympy's rendering of literals, ``Integer (12 )``, ``Float ('0.5' )``, built
  from tokens its ANTLR lexer already restricted to numerals and names);
- opening a file for writing, creating, renaming or deleting files and folders;
- starting processes, loading native libraries, and opening network connections.

A refused operation raises inside the scorer, and is also recorded, so a scorer that swallows
the exception still yields an ``error`` verdict naming what was blocked, never a silent "wrong".
Workers also drop secret-looking environment variables and may not grow any file
(``RLIMIT_FSIZE`` 0), so a slip has nothing to steal and nowhere to write.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from assay.core.redact import secret_env_name

# sympy's parse_expr renders "2" as "Integer (2 )" and "0.5" as "Float ('0.5' )", and prepends
# "from sympy import *". With only these tokens (a literal is always inside its constructor) no
# attribute access, call of another name or statement can be spelled, nor plain Python arithmetic.
_SAFE_TOKEN = re.compile(
    r"\s+|\*\*|[-+*/(),]|(?:E|pi|I|oo|zoo|nan)\b|"
    r"(?:Integer|Rational|Number)\s*\(\s*\d+\s*\)|"
    r"Float\s*\(\s*'[0-9.eE+-]+'\s*\)|Symbol\s*\(\s*'[A-Za-z][A-Za-z0-9_]*'\s*\)"
)
_SAFE_SOURCES = {"from sympy import *"}
# Library code generation from the library's own templates (sympy specialises polynomial
# monomial arithmetic per number of variables); no answer text reaches these strings.
_TRUSTED_CODEGEN = {(os.path.join("sympy", "polys", "monomials.py"), "_build")}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_BLOCKED_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
    "subprocess.Popen", "pty.spawn",
    "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
    "os.symlink", "os.link", "os.utime", "os.chdir", "shutil.rmtree", "shutil.copyfile", "shutil.move",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect", "webbrowser.open",
    "ctypes.dlopen", "ctypes.dlsym",
    "os.putenv", "os.unsetenv", "sys.settrace", "sys.setprofile",
}


class SandboxViolation(RuntimeError):
    """A scorer tried to do something a verify worker never may."""


class _State(threading.local):
    active = False
    violations: list


_state = _State()
_installed = False


def _is_safe_source(source: Any) -> bool:
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return False
    if not isinstance(source, str):
        return False  # an AST built at run time is code too
    if source in _SAFE_SOURCES:
        return True
    pos = 0
    while pos < len(source):
        m = _SAFE_TOKEN.match(source, pos)
        if not m:
            return False
        pos = m.end()
    return True


def _from_import(filename: Any) -> bool:
    """A module being imported from its file, the one legitimate compile during scoring."""
    name = os.fsdecode(filename) if isinstance(filename, (str, bytes)) else ""
    return name.endswith(".py") and os.path.isfile(name)


def _compiled_by_trusted_codegen() -> bool:
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return False
    where = (frame.f_code.co_filename, frame.f_code.co_name)
    return any(where[0].endswith(path) and where[1] == fn for path, fn in _TRUSTED_CODEGEN)


def _why_blocked(event: str, args: tuple) -> str | None:
    if event == "compile":
        source, filename = (args + (None, None))[:2]
        if _from_import(filename) or _is_safe_source(source) or _compiled_by_trusted_codegen():
            return None
        text = source.decode("utf-8", "replace") if isinstance(source, bytes) else str(source)
        return f"compile of Python source {text[:60]!r}"
    if event == "open":
        path, mode, flags = (args + (None, None, None))[:3]
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writing:
            return f"open({path!r}) for writing"
        name = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
        # Another process's environment is where the parent's secrets would be.
        return f"reading {name!r}" if name.startswith("/proc/") and name.endswith("environ") else None
    if event in _BLOCKED_EVENTS:
        return event
    return None


def _hook(event: str, args: tuple) -> None:
    if not _state.active:
        return
    why = _why_blocked(event, args)
    if why is not None:
        _state.violations.append(why)
        raise SandboxViolation(f"blocked {why} while scoring")


def install() -> None:
    """Add the audit hook to this process (once; audit hooks cannot be removed). Inert until ``guarded``."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


@contextmanager
def guarded() -> Iterator[list]:
    """Run the block under the sandbox; yields the list of what was blocked, filled as it happens.

    Raises SandboxViolation on exit if anything was blocked, even if the code swallowed it.
    """
    install()
    if _state.active:  # nested: the outer block collects
        yield _state.violations
        return
    _state.violations = []
    _state.active = True
    try:
        yield _state.violations
    finally:
        _state.active = False
    if _state.violations:
        raise SandboxViolation(f"blocked {'; '.join(dict.fromkeys(_state.violations))} while scoring")


def scrub_environment(environ: "os._Environ[str] | dict" = os.environ) -> list[str]:
    """Remove secret-looking variables (API keys, tokens, proxies with credentials); returns their names."""
    names = [k for k in list(environ) if secret_env_name(k)]
    for k in names:
        del environ[k]
    return names


@contextmanager
def scrubbed_environ() -> Iterator[None]:
    """This process's environment without secrets for the duration, e.g. while it starts the fork
    server that verify workers come from: a child's initial environment stays readable in
    /proc/<pid>/environ even after the child deletes the variables."""
    saved = {k: os.environ[k] for k in list(os.environ) if secret_env_name(k)}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def forbid_file_growth() -> None:
    """No regular file may grow in this process (pipes are unaffected); a write fails with EFBIG."""
    try:
        import resource
        import signal
    except ImportError:  # not on Windows; the audit hook still blocks opening for writing
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the worker
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))


def harden_worker() -> None:
    """Everything a verify worker does once, before it takes its first item."""
    scrub_environment()
    sys.dont_write_bytecode = True  # a lazy import must not need to write a .pyc
    forbid_file_growth()
    install()
