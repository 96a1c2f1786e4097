"""The package installs with pip into a virtual environment over Debian's grpcio, maps every gRPC
status to its exception, and draws progress as a bar on terminals and as lines elsewhere; the
benchmark script runs against a mesh."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import interpmesh
from interpmesh.errors import from_rpc_error
from interpmesh.jobs import ProgressBar
from meshproc import REPO, LocalMesh

PACKAGE = REPO / "clients" / "python"


def test_pip_install_into_a_venv_over_system_grpcio(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info", ".mypy_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import interpmesh, os, grpc; d = os.path.dirname(interpmesh.__file__); "
                            "from interpmesh._proto.interpmesh.v1 import model_service_pb2_grpc; "
                            "print(d, os.path.exists(os.path.join(d, 'py.typed')))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    where, typed = check.stdout.split()
    assert where.startswith(str(venv)) and typed == "True"


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_every_status_maps_to_its_exception() -> None:
    for status in grpc.StatusCode:
        if status == grpc.StatusCode.OK:
            continue
        error = from_rpc_error(_Error(status, f"message {status.name}"))
        expected = "".join(part.capitalize() for part in status.name.split("_"))
        assert type(error).__name__ == expected, status
        assert error.code == status.name and str(error) == f"message {status.name}" and isinstance(error, interpmesh.InterpMeshError)
        assert getattr(interpmesh, expected) is type(error)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    tty = _Tty()
    bar = ProgressBar("probing", tty)
    bar.update(0.5, "half")
    bar.update(1.0, "done")
    bar.close("SUCCEEDED")
    text = tty.getvalue()
    assert text.startswith("\rprobing [###############...............]  50.0% half")
    assert "[##############################] 100.0% done" in text and text.endswith("\nprobing: succeeded\n")
    plain = io.StringIO()
    bar = ProgressBar("probing", plain)
    for f in (0.0, 0.01, 0.02, 0.5, 0.51, 1.0):
        bar.update(f, "working")
    bar.close("SUCCEEDED")
    assert plain.getvalue().splitlines() == ["probing: 0% working", "probing: 50% working", "probing: 100% working", "probing: succeeded"]
    quiet = ProgressBar("probing", False)
    quiet.update(0.5, "x")
    quiet.close("SUCCEEDED")


def test_benchmark_script_against_a_mesh(local_mesh: LocalMesh) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "python" / "run_with_cache_bench.py"), "--url", local_mesh.url,
                             "--key", local_mesh.key or "", "--model", "concepts", "--batch", "3", "--seq", "10", "--iters", "2", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["times"]) == 2 and report["median_seconds"] > 0
    assert report["captured_bytes"] == 2 * 3 * 10 * 64 * 4  # two resid_post hooks of [3, 10, 64] float32


def test_bad_arguments_are_refused_before_sending(model: interpmesh.Model) -> None:
    with pytest.raises(interpmesh.InvalidArgument, match="padding_side"):
        model.run("the dog", padding_side="middle")
    with pytest.raises(interpmesh.InvalidArgument, match="exactly one metric"):
        model.gradients("the dog", "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="dtype"):
        model.run_with_cache("the dog", names_filter="blocks.0.hook_resid_post", dtype="int8")
    with pytest.raises(interpmesh.InvalidArgument, match="at least one"):
        model.run([])


def test_figure_show_without_ipython_saves_a_file(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython", None)  # as if IPython were not installed
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    figure = interpmesh.Figure("accuracy", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "a caption")
    figure.show()
    name, path = capsys.readouterr().out.strip().split(": ", 1)
    try:
        assert name == "accuracy" and Path(path).read_bytes() == figure.content and path.endswith(".svg")
    finally:
        Path(path).unlink()
    assert figure._repr_svg_() == figure.content.decode() and figure._repr_png_() is None


def test_connect_reads_the_environment_and_the_default_model(local_mesh: LocalMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERPMESH_SERVER", local_mesh.url)
    monkeypatch.setenv("INTERPMESH_API_KEY", local_mesh.key or "")
    with interpmesh.connect() as mesh:
        assert mesh.url == local_mesh.url
        # No model name: the gateway's default model (its only one here).
        assert mesh.model().info.architecture == "GPT2LMHeadModel"
        assert mesh.model().to_tokens("the dog") == mesh.model("concepts").to_tokens("the dog")
    monkeypatch.setenv("INTERPMESH_API_KEY", "wrong")
    with interpmesh.connect() as mesh:
        with pytest.raises(interpmesh.Unauthenticated):
            mesh.plugins()


def test_wire_reader_agrees_with_protobuf() -> None:
    """The raw-bytes chunk reader against protobuf's own parse of the same messages (packed and
    unpacked shapes, the gradient flag, large offsets, an unknown field)."""
    from interpmesh import _wire
    from interpmesh._proto.interpmesh.v1 import model_service_pb2 as pb

    chunk = pb.ActivationChunk(hook="blocks.11.attn.hook_pattern", shape=[8, 12, 128, 128], dtype=2, offset=3 << 33,
                               total_bytes=(3 << 33) + 5, data=bytes(range(256)) * 3, gradient=True)
    raw = pb.RunResponse(activation=chunk).SerializeToString() + b"\xf8\x07\x2a"  # + unknown varint field 127 = 42
    view, _ = _wire.split_message(raw, 1)
    assert view is not None
    assert (view.hook, view.shape, view.dtype, view.offset, view.total_bytes, bytes(view.data), view.gradient) == \
        (chunk.hook, list(chunk.shape), chunk.dtype, chunk.offset, chunk.total_bytes, chunk.data, True)
    # A result message has no chunk; an unpacked shape (as older encoders write it) reads the same.
    result = pb.RunResponse(result=pb.RunResult(forward_batch_size=3)).SerializeToString()
    assert _wire.split_message(result, 1)[0] is None
    unpacked = b"".join([b"\x0a\x01h", b"\x10\x02", b"\x10\x03", b"\x28\x18", b"\x32\x18" + bytes(24)])
    view2 = _wire.chunk_view(memoryview(unpacked), 0, len(unpacked))
    assert (view2.hook, view2.shape, view2.total_bytes, len(view2.data)) == ("h", [2, 3], 24, 24)
    with pytest.raises(interpmesh.ProtocolError):
        _wire.split_message(raw[:-20], 1)
