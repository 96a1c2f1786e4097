"""The committed stubs are what generate_stubs.py makes from protos/ today, and the generator handles
nested helper protos (google/api/*.proto) with package-relative imports."""
from __future__ import annotations

import filecmp
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parent.parent
COMMITTED = PACKAGE / "interpmesh" / "_proto"


def _generate(protos: Path, out: Path) -> None:
    result = subprocess.run([sys.executable, str(PACKAGE / "generate_stubs.py"), "--protos", str(protos), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _files(root: Path) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.py")}


def test_committed_stubs_are_fresh() -> None:
    with tempfile.TemporaryDirectory(prefix="interpmesh-") as tmp:
        out = Path(tmp) / "_proto"
        _generate(REPO / "protos", out)
        fresh, committed = _files(out), _files(COMMITTED)
        assert fresh == committed, f"stub files differ: missing {sorted(fresh - committed)}, stale {sorted(committed - fresh)}; " \
                                   "run /usr/bin/python3 clients/python/generate_stubs.py and commit"
        stale = [f for f in sorted(fresh) if not filecmp.cmp(out / f, COMMITTED / f, shallow=False)]
        assert not stale, f"stubs out of date: {stale}; run /usr/bin/python3 clients/python/generate_stubs.py and commit"


def test_every_proto_is_generated_including_nested_helper_protos() -> None:
    """A proto tree with google/api/annotations.proto imported by a service (as gRPC JSON transcoding adds)
    generates every file, and the imports between generated modules are package-relative."""
    with tempfile.TemporaryDirectory(prefix="interpmesh-") as tmp:
        protos = Path(tmp) / "protos"
        shutil.copytree(REPO / "protos", protos)
        api = protos / "google" / "api"
        api.mkdir(parents=True, exist_ok=True)
        if not (api / "http.proto").exists():
            (api / "http.proto").write_text('syntax = "proto3";\npackage google.api;\nmessage HttpRule { string get = 2; string body = 7; }\n')
        if not (api / "annotations.proto").exists():
            (api / "annotations.proto").write_text(
                'syntax = "proto3";\npackage google.api;\nimport "google/api/http.proto";\nimport "google/protobuf/descriptor.proto";\n'
                'extend google.protobuf.MethodOptions { HttpRule http = 72295728; }\n')
        service = protos / "interpmesh" / "v1" / "model_service.proto"
        text = service.read_text()
        if "google/api/annotations.proto" not in text:
            service.write_text(text.replace('import "interpmesh/v1/tensor.proto";',
                                            'import "interpmesh/v1/tensor.proto";\nimport "google/api/annotations.proto";'))
        pkg = Path(tmp) / "pkg"
        (pkg / "fakemesh").mkdir(parents=True)
        (pkg / "fakemesh" / "__init__.py").write_text("")
        _generate(protos, pkg / "fakemesh" / "_proto")
        generated = _files(pkg / "fakemesh" / "_proto")
        assert "google/api/annotations_pb2.py" in generated and "google/api/http_pb2.py" in generated
        source = (pkg / "fakemesh" / "_proto" / "interpmesh" / "v1" / "model_service_pb2.py").read_text()
        assert "from ...google.api import annotations_pb2" in source
        assert "from google.api" not in source
        # Importable in a fresh interpreter (the default descriptor pool must not already hold these files).
        check = subprocess.run([sys.executable, "-c", "import fakemesh._proto.interpmesh.v1.model_service_pb2_grpc as m; print(m.ModelServiceStub.__name__)"],
                               cwd=pkg, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() == "ModelServiceStub"


def test_package_imports_its_own_stubs() -> None:
    module = importlib.import_module("interpmesh._proto.interpmesh.v1.model_service_pb2")
    assert module.RunRequest.DESCRIPTOR.full_name == "interpmesh.v1.RunRequest"


def test_message_modules_load_under_every_protobuf_runtime() -> None:
    """The message modules are in the builder form (no descriptor constructors, which the upb runtime of
    pip's protobuf wheels refuses), and load and round-trip under the pure-Python runtime too."""
    for module in (COMMITTED / "interpmesh" / "v1").glob("*_pb2.py"):
        text = module.read_text()
        assert "AddSerializedFile(" in text and "_descriptor.FieldDescriptor(" not in text, module.name
    code = ("from google.protobuf.internal import api_implementation as a; assert a.Type() == 'python', a.Type()\n"
            "from interpmesh._proto.interpmesh.v1 import model_service_pb2 as pb, analysis_service_pb2 as apb\n"
            "r = pb.RunRequest(inputs=[pb.Input(tokens=pb.TokenIds(ids=[1, 2]))], gradient=pb.GradientRequest(loss=True))\n"
            "back = pb.RunRequest.FromString(r.SerializeToString())\n"
            "assert list(back.inputs[0].tokens.ids) == [1, 2] and back.gradient.loss and apb.JOB_STATE_SUCCEEDED == 3\n")
    env = dict(__import__("os").environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python", PYTHONPATH=str(PACKAGE))
    check = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
