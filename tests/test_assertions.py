"""Every test checks something: a test function with no assertion passes whatever the code does.

The scan reads tests/ with ``ast``. A function checks something when its body (nested functions
included) has an ``assert``, raises AssertionError, uses ``pytest.raises``, ``pytest.warns``,
``pytest.fail`` or ``pytest.deprecated_call``, calls an ``assert*`` function (numpy.testing's,
unittest's, a mock's), or calls by its plain name a function of tests/ that checks something
(across the test modules and their helpers). Method calls (``server.close()``) do not count as
checks: their names are too common to tell which function they reach.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_PYTEST_CHECKS = {"raises", "warns", "fail", "deprecated_call"}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _checks_directly(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Assert):
            return True
        if isinstance(child, ast.Raise) and child.exc is not None:
            exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
            if isinstance(exc, ast.Name) and exc.id == "AssertionError":
                return True
        if isinstance(child, ast.Call):
            func = child.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "pytest"
                and func.attr in _PYTEST_CHECKS
            ):
                return True
            name = _called_name(child)
            if name is not None and name.lstrip("_").startswith("assert"):
                return True
    return False


def _calls(node: ast.AST) -> set[str]:
    """The plain names the node calls (``helper(...)``, not ``thing.helper(...)``)."""
    return {
        child.func.id
        for child in ast.walk(node)
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
    }


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def find_tests_without_assertions(tests_dir: Path) -> list[str]:
    """``file::function`` for each test function in tests_dir that checks nothing."""
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(tests_dir.rglob("*.py"))
    }
    # Which function names check something, directly or through other helpers (a fixpoint).
    bodies: dict[str, list[ast.AST]] = {}
    for tree in trees.values():
        for function in _functions(tree):
            bodies.setdefault(function.name, []).append(function)
    checking = {name for name, nodes in bodies.items() if any(_checks_directly(n) for n in nodes)}
    calls = {name: set().union(*(_calls(n) for n in nodes)) for name, nodes in bodies.items()}
    changed = True
    while changed:
        changed = False
        for name, called in calls.items():
            if name not in checking and called & checking:
                checking.add(name)
                changed = True

    found: list[str] = []
    for path, tree in trees.items():
        if not path.name.startswith("test_"):
            continue
        for function in _functions(tree):
            if not function.name.startswith("test"):
                continue
            if _checks_directly(function) or _calls(function) & checking:
                continue
            found.append(f"{path.relative_to(tests_dir.parent)}::{function.name}")
    return found


def test_the_scan_finds_a_test_that_checks_nothing(tmp_path: Path) -> None:
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / "helpers.py").write_text(
        "def check_equal(a, b):\n    assert a == b\n\ndef via(a):\n    check_equal(a, a)\n"
    )
    (tests_dir / "test_sample.py").write_text(
        "import pytest\nimport numpy as np\n"
        "def test_asserts():\n    assert 1\n"
        "def test_raises():\n    with pytest.raises(ValueError):\n        int('x')\n"
        "def test_numpy():\n    np.testing.assert_array_equal([1], [1])\n"
        "def test_helper():\n    via(1)\n"
        "def test_method_named_like_a_helper(server):\n    server.via(1)\n"
        "class TestGroup:\n    def test_method(self):\n        self.assertEqual(1, 1)\n"
        "def test_only_runs():\n    int('1')\n"
        "def test_fail_only_if():\n    if False:\n        pytest.fail('x')\n"
        "async def test_async_nothing():\n    pass\n"
    )
    assert find_tests_without_assertions(tests_dir) == [
        "tests/test_sample.py::test_method_named_like_a_helper",
        "tests/test_sample.py::test_only_runs",
        "tests/test_sample.py::test_async_nothing",
    ]


def test_every_test_in_tests_checks_something() -> None:
    found = find_tests_without_assertions(TESTS)
    assert not found, (
        "tests that assert nothing pass whatever the code does; add an assertion on what the "
        "test is about:\n" + "\n".join("  " + name for name in found)
    )
