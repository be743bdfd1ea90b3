"""The built wheel is what users install: one top-level package, nothing left outside it.

Runs the same command a packager would (``pip wheel --no-deps .``), then reads the
wheel: exactly one top-level package ``fallwatch``, the data files the code opens at run
time inside it, and no module that still imports a pre-namespace top-level name (which
would work in a checkout and break in an installed wheel).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OLD_TOP_LEVEL = {"edge", "gateway", "models", "firmware_sim", "dashboards"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # build from a copy, as a clean clone would: a stale build/ in a developer's tree must not mask a gap
    src = tmp_path_factory.mktemp("src") / "fallwatch"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "var", "__pycache__", ".*_cache", "reports"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(out)],
                   check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("fallwatch-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fallwatch"}
    top_level = [n for n in wheel.namelist() if n.endswith("top_level.txt")]
    if top_level:
        assert wheel.read(top_level[0]).decode().split() == ["fallwatch"]


def test_wheel_carries_its_runtime_files(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for needed in ("fallwatch/models/fall/fall_detector.onnx", "fallwatch/models/risk/risk_model.onnx",
                   "fallwatch/gateway/static/staff.html", "fallwatch/sim/scenarios/flat.toml",
                   "fallwatch/edge/agent.py", "fallwatch/protocol/contract.py", "fallwatch/py.typed"):
        assert needed in names, needed
    assert not any(n.startswith("fallwatch/testing/") and n.endswith(".pyc") for n in names)


def test_no_module_in_the_wheel_imports_an_old_top_level_name(wheel: zipfile.ZipFile) -> None:
    offenders = []
    for name in wheel.namelist():
        if not name.endswith(".py"):
            continue
        tree = ast.parse(wheel.read(name), name)
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0] in OLD_TOP_LEVEL]
    assert offenders == []
