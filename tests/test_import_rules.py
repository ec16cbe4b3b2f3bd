"""The import rules of the house style, enforced.

(a) ``services/engine`` and ``services/core`` know no network: no grpc, redis or
    opentelemetry, even lazily.
(b) The router, ``core`` and ``serving`` import without torch (the router's container has none).
(c) The two replicas do not import each other: what they share is ``replica``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SERVICES = Path(__file__).resolve().parents[1] / "services"
ENGINE = SERVICES / "engine"
NETWORK_PACKAGES = {"grpc", "redis", "opentelemetry"}


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names, at any depth."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules.add(node.args[0].value)  # importlib.import_module("...")
    return modules


def test_scanner_sees_nested_and_dynamic_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent("""
        import os, grpc.aio
        from redis import asyncio
        def later():
            from opentelemetry.trace import get_tracer
            importlib.import_module("grpc_health.v1")
    """)
    )
    assert imported_modules(sample) == {
        "os",
        "grpc.aio",
        "redis",
        "opentelemetry.trace",
        "grpc_health.v1",
    }


def test_engine_and_core_import_no_network_package() -> None:
    sources = sorted(ENGINE.rglob("*.py")) + sorted((SERVICES / "core").rglob("*.py"))
    assert len(sources) > 10
    offenders = [
        f"{path.relative_to(SERVICES)}: {module}"
        for path in sources
        for module in sorted(imported_modules(path))
        if module.split(".")[0] in NETWORK_PACKAGES or module.startswith("grpc_")
    ]
    assert not offenders, "engine and core must not import network packages:\n" + "\n".join(
        offenders
    )


def test_replicas_do_not_import_each_other() -> None:
    for role, other in (("draft", "verifier"), ("verifier", "draft")):
        for path in sorted((SERVICES / role).rglob("*.py")):
            imported = imported_modules(path)
            assert not any(m.startswith(f"specdec.{other}") for m in imported), path


TORCHLESS = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked here (importing {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")

    import specdec.router
    import specdec.router.app
    import specdec.router.discovery
    import specdec.client
    import specdec.up
    import specdec.serving.errors, specdec.serving.metrics, specdec.serving.server
    import specdec.serving.telemetry
    import specdec.core.depth, specdec.core.limits, specdec.core.rounds
    import specdec.core.spec_cache, specdec.core.speculation
    from specdec.core.tokenizer import Tokenizer

    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("ok", Tokenizer.__name__)
""")


def test_router_core_and_serving_import_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", TORCHLESS], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok Tokenizer"
