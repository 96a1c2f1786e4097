"""The docs run as written: docs/python.md's quick start and examples/walkthrough.py, against real meshes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from meshproc import REPO, LocalMesh

PACKAGE = REPO / "clients" / "python"


def _env(url: str, key: str, **extra: str) -> dict:
    env = dict(os.environ, INTERPMESH_URL=url, INTERPMESH_API_KEY=key, **extra)
    env["PYTHONPATH"] = str(PACKAGE) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def quick_start() -> str:
    text = (REPO / "docs" / "python.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/python.md's quick start has no ```python block"
    return "\n".join(blocks)


def test_quick_start_runs_as_written(local_mesh: LocalMesh, tmp_path: Path) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start())
    assert 'os.environ.get("INTERPMESH_URL"' in script.read_text()
    result = subprocess.run([sys.executable, str(script)], env=_env(local_mesh.url, local_mesh.key or ""), capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    before, after = lines[0].split(" -> ")
    assert before in ("awful", "grim", "poor") and after in ("lovely", "great", "nice"), lines[0]
    assert "blocks.1.hook_resid_post" in lines[1]
    assert lines[2] == "(1, 64)"
    assert "probing: succeeded" in result.stderr


def test_readme_python_block_runs_as_written(local_mesh: LocalMesh, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text().split("\n## Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    script = tmp_path / "readme.py"
    script.write_text(blocks[0])
    result = subprocess.run([sys.executable, str(script)], env=_env(local_mesh.url, local_mesh.key or ""), capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    word, accuracy, shape = result.stdout.split(" ", 2)
    assert word in ("lovely", "great", "nice") and 0.5 <= float(accuracy) <= 1.0 and shape.strip() == "(1, 64)"


@pytest.fixture(scope="module")
def induction_mesh() -> Iterator[LocalMesh]:
    with LocalMesh("induction", key="test-key") as m:
        yield m


def test_walkthrough_runs(local_mesh: LocalMesh, induction_mesh: LocalMesh) -> None:
    assert local_mesh.key == induction_mesh.key
    result = subprocess.run([sys.executable, str(PACKAGE / "examples" / "walkthrough.py")],
                            env=_env(local_mesh.url, local_mesh.key or "", INTERPMESH_INDUCTION_URL=induction_mesh.url),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "induction score per layer-1 head" in result.stdout and "steered:" in result.stdout
