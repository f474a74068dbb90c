"""The suite bounds itself: every test has a time limit and every wait on another process or thread
has one too, so a hang fails fast instead of eating CI's time (issue 13, item 2)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output"}


def _ini() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _keywords(call: ast.Call) -> set[str]:
    return {k.arg for k in call.keywords if k.arg is not None}


def test_every_test_has_a_time_limit_and_a_hard_stop_behind_it():
    ini = _ini()
    assert float(ini["timeout"]) > 0  # pytest-timeout's default limit per test
    assert ini["timeout_method"] == "signal"  # fail the test, keep the run, dump all threads
    assert ini["faulthandler_exit_on_timeout"] is True
    hard_stop = float(ini["faulthandler_timeout"])
    assert hard_stop > float(ini["timeout"])
    pytest_timeout = pytest.importorskip("pytest_timeout")
    assert pytest_timeout is not None
    # A per-test limit above the hard stop would be cut by it without pytest-timeout's report.
    for path in sorted(TESTS.rglob("test_*.py")):
        for call in _calls(path):
            if _name(call.func).endswith("mark.timeout") and call.args:
                limit = ast.literal_eval(call.args[0])
                assert limit < hard_stop, f"{path.name}:{call.lineno} timeout {limit} >= {hard_stop}"


def test_every_subprocess_worker_and_thread_wait_is_bounded():
    unbounded = []
    for path in sorted(TESTS.rglob("*.py")):
        for call in _calls(path):
            name = _name(call.func)
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name.startswith("subprocess.") and name.split(".")[-1] in SUBPROCESS_CALLS:
                if "timeout" not in _keywords(call):
                    unbounded.append(f"{where} {name} without timeout=")
            elif name.endswith("Popen"):
                unbounded.append(f"{where} Popen (use subprocess.run(..., timeout=))")
            elif name.endswith("DataLoader") and "num_workers" in _keywords(call):
                if "timeout" not in _keywords(call):
                    unbounded.append(f"{where} DataLoader with workers but no timeout=")
            elif name.endswith(".join") and not call.args and not call.keywords:
                unbounded.append(f"{where} .join() without a timeout")
    assert not unbounded, "\n".join(unbounded)
