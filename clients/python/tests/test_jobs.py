"""Plugins, analysis jobs (run with progress, submit and watch, get by id), result tables as rows of
dicts, figures saved, failures as status-named exceptions; artifacts put/get/list/delete."""
from __future__ import annotations

import io
import sys
import json
from pathlib import Path

import numpy as np
import pytest

import interpmesh
from conftest import sentiment_rows

PROBE = {"hooks": ["blocks.*.hook_resid_post"], "position": "last", "holdout": 0.25, "seed": 3, "save_prefix": "probes/pytest"}


def test_plugins(mesh: interpmesh.Mesh) -> None:
    plugins = {p.id: p for p in mesh.plugins()}
    assert {"probing", "steering", "sae", "retrieval-heads", "circuits"} <= set(plugins)
    probing = plugins["probing"]
    assert probing.loaded and probing.error == "" and "table:per_hook" in probing.produces
    described = mesh.plugin("probing")
    assert described.version == probing.version
    assert described.parameter_schema["type"] == "object" and "hooks" in json.dumps(described.parameter_schema)
    with pytest.raises(interpmesh.NotFound):
        mesh.plugin("no-such-plugin")


def test_run_probing_with_progress_tables_figures_and_artifacts(mesh: interpmesh.Mesh, model: interpmesh.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = io.StringIO()
    job = mesh.run("probing", {"rows": sentiment_rows(64), **PROBE}, model="concepts", progress=progress)
    assert job.state == "SUCCEEDED" and job.done and job.plugin == "probing"
    lines = progress.getvalue().splitlines()
    assert lines and lines[-1] == "probing: succeeded" and any("%" in line for line in lines)
    result = job.result
    assert result is not None
    per_hook = result.tables["per_hook"]
    assert per_hook.columns[:3] == ["hook", "layer", "accuracy"]
    assert [row["hook"] for row in per_hook] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert all(0.5 <= row["accuracy"] <= 1.0 for row in per_hook)
    assert per_hook.column("accuracy") == [row["accuracy"] for row in per_hook]
    # pandas (Debian's python3-pandas, which .ci/run installs): the same rows as a DataFrame ...
    frame = per_hook.to_pandas()
    assert list(frame.columns) == per_hook.columns and len(frame) == len(list(per_hook))
    assert frame["accuracy"].tolist() == per_hook.column("accuracy")
    # ... and without it, an ImportError that says what to install.
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pandas"):
        per_hook.to_pandas()
    monkeypatch.delitem(sys.modules, "pandas")
    figure = next(iter(result.figures.values()))
    saved = figure.save(tmp_path)
    assert saved.exists() and saved.read_bytes() == figure.content and saved.suffix in (".svg", ".png")
    assert figure.media_type != "image/svg+xml" or figure._repr_svg_().lstrip().startswith("<")  # type: ignore[union-attr]
    assert result.artifacts == [f"probes/pytest/{h}" for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")]
    # The saved probe: safetensors decoded to numpy, a direction over d_model.
    artifact = mesh.artifacts.get(result.artifacts[1])
    tensors = [artifact[f] for f in artifact.files if f.endswith(".safetensors")]
    assert tensors and any(v.shape[-1] == 64 for t in tensors for v in t.values())
    # It separates the classes it was trained on: apply it ourselves to activations from run_with_cache.
    weights = next(v for t in tensors for v in t.values() if v.shape[-1] == 64).reshape(-1, 64)[0]
    rows = sentiment_rows(40, seed=9)
    _, cache = model.run_with_cache([r["text"] for r in rows], names_filter="blocks.1.hook_resid_post", positions="last", logits="none")
    scores = cache["blocks.1.hook_resid_post"][:, 0] @ weights
    labels = np.array([r["label"] == "positive" for r in rows])
    separation = abs(scores[labels].mean() - scores[~labels].mean()) / (scores.std() + 1e-9)
    assert separation > 1.0


def test_submit_watch_job_and_list(mesh: interpmesh.Mesh) -> None:
    job = mesh.submit("probing", {"rows": sentiment_rows(48, seed=2), **PROBE, "save_probes": False}, model="concepts")
    assert job.id and job.state in ("QUEUED", "RUNNING", "SUCCEEDED")
    same = mesh.job(job.id).watch(progress=False)
    assert same.state == "SUCCEEDED" and same.result is not None and "per_hook" in same.result.tables
    assert same.parameters["seed"] == 3
    assert job.refresh().state == "SUCCEEDED"
    assert any(j.id == job.id for j in mesh.jobs(plugin="probing"))
    with pytest.raises(interpmesh.NotFound):
        mesh.job("00000000000000000000000000000000")


def test_failed_job_raises_the_status_named_exception(mesh: interpmesh.Mesh) -> None:
    with pytest.raises(interpmesh.InvalidArgument) as e:
        mesh.run("probing", {"rows": sentiment_rows(8), "hooks": ["blocks.0.hook_nope"]}, model="concepts", progress=False)
    assert "hook" in str(e.value) and e.value.job is not None and e.value.job.state == "FAILED"
    job = mesh.run("probing", {"rows": sentiment_rows(8), "hooks": ["blocks.0.hook_nope"]}, model="concepts", progress=False,
                   raise_on_failure=False)
    assert job.state == "FAILED" and job.error_code == "INVALID_ARGUMENT" and job.result is None
    with pytest.raises(interpmesh.FailedPrecondition, match="no analysis worker serves plugin 'no-such-plugin'"):
        mesh.run("no-such-plugin", {}, progress=False)


def test_artifacts_put_get_list_delete(mesh: interpmesh.Mesh, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(64).astype(np.float32)
    info = mesh.artifacts.put("pytest/steer", {"vector.safetensors": {"direction": direction}, "notes.txt": b"hello",
                                               "card.json": json.dumps({"layer": 1}).encode()}, metadata={"source": "pytest"})
    assert info.name == "pytest/steer" and {f.name for f in info.files} == {"vector.safetensors", "notes.txt", "card.json"}
    listed = mesh.artifacts.list("pytest/")
    assert [a.name for a in listed] == ["pytest/steer"] and listed[0].metadata == {"source": "pytest"}
    artifact = mesh.artifacts.get("pytest/steer", out=tmp_path / "steer")
    np.testing.assert_array_equal(artifact["vector.safetensors"]["direction"], direction)
    assert artifact["notes.txt"] == b"hello" and artifact["card.json"] == {"layer": 1}
    assert (tmp_path / "steer" / "notes.txt").read_bytes() == b"hello"
    # A big file goes up and comes back in 1 MiB chunks, byte for byte; a folder uploads as it is.
    big = rng.standard_normal((600, 1000)).astype(np.float32)
    (tmp_path / "folder").mkdir()
    interpmesh.safetensors.save({"big": big}, tmp_path / "folder" / "big.safetensors")
    mesh.artifacts.put("pytest/big", tmp_path / "folder")
    np.testing.assert_array_equal(mesh.artifacts.get("pytest/big")["big.safetensors"]["big"], big)
    assert mesh.artifacts.delete("pytest/big") and not mesh.artifacts.delete("pytest/big")
    with pytest.raises(interpmesh.NotFound):
        mesh.artifacts.get("pytest/big")
    with pytest.raises(interpmesh.InvalidArgument):
        mesh.artifacts.put("Bad Name!", {"x.txt": b"x"})
