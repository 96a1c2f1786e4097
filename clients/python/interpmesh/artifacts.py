"""Artifacts: named sets of files kept by the gateway (probes, SAEs, steering vectors, ...)."""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Union

import grpc

from . import safetensors
from ._proto.interpmesh.v1 import artifact_service_pb2 as artpb
from .errors import ProtocolError, from_rpc_error

if TYPE_CHECKING:  # pragma: no cover
    from .mesh import Mesh

__all__ = ["Artifacts", "Artifact", "ArtifactInfo", "FileInfo"]

_UPLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    """One file of an artifact: name, size and SHA-256 (hex)."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact's description: name, files, metadata (dict) and creation time."""

    name: str
    files: List[FileInfo]
    metadata: Dict[str, Any]
    created: Optional[_dt.datetime]

    @staticmethod
    def from_proto(a: Any) -> "ArtifactInfo":
        created = None
        if a.HasField("created") and (a.created.seconds or a.created.nanos):
            created = _dt.datetime.fromtimestamp(a.created.seconds + a.created.nanos / 1e9, tz=_dt.timezone.utc)
        return ArtifactInfo(a.name, [FileInfo(f.name, int(f.bytes), f.sha256) for f in a.files],
                            json.loads(a.metadata_json) if a.metadata_json else {}, created)


class Artifact(Mapping[str, Any]):
    """A downloaded artifact. ``artifact[file]`` decodes by extension: ``.safetensors`` → dict of numpy
    arrays, ``.json`` → parsed JSON, anything else → bytes. ``raw[file]`` is always the bytes."""

    def __init__(self, info: ArtifactInfo, raw: Dict[str, bytes]) -> None:
        self.info = info
        self.raw = raw

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def metadata(self) -> Dict[str, Any]:
        return self.info.metadata

    @property
    def files(self) -> List[str]:
        """File names, in the artifact's order."""
        return list(self.raw)

    def __getitem__(self, file: str) -> Any:
        data = self.raw[file]
        if file.endswith(".safetensors"):
            return safetensors.loads(data)
        if file.endswith(".json"):
            return json.loads(data.decode("utf-8"))
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def save(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
        """Writes every file into ``directory`` (created if needed); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self.raw.items():
            (d / name).write_bytes(data)
        return d

    def __repr__(self) -> str:
        return f"Artifact({self.name!r}, files={self.files})"


FileContent = Union[bytes, bytearray, str, "os.PathLike[str]", Mapping[str, Any]]


class Artifacts:
    """``mesh.artifacts``: :meth:`list`, :meth:`get`, :meth:`put`, :meth:`delete`."""

    def __init__(self, mesh: "Mesh") -> None:
        self._mesh = mesh

    def list(self, prefix: str = "") -> List[ArtifactInfo]:
        """Every artifact whose name starts with ``prefix``, by name (all pages followed)."""
        request = artpb.ListArtifactsRequest(prefix=prefix)
        out: List[ArtifactInfo] = []
        while True:
            page = self._mesh._unary(self._mesh._artifacts.ListArtifacts, request)
            out.extend(ArtifactInfo.from_proto(a) for a in page.artifacts)
            if not page.next_page_token:
                return out
            if page.next_page_token == request.page_token or not page.artifacts:
                raise ProtocolError("the gateway returned a next_page_token that does not advance the artifact listing")
            request.page_token = page.next_page_token

    def get(self, name: str, out: Union[None, str, "os.PathLike[str]"] = None) -> Artifact:
        """Downloads an artifact (each file's bytes placed at the offsets sent); with ``out``, also writes its files there."""
        info: Optional[ArtifactInfo] = None
        buffers: Dict[str, bytearray] = {}
        for chunk in self._mesh._stream(self._mesh._artifacts.GetArtifact, artpb.GetArtifactRequest(name=name)):
            if chunk.HasField("header"):
                info = ArtifactInfo.from_proto(chunk.header)
                buffers = {f.name: bytearray(f.bytes) for f in info.files}
                continue
            d = chunk.data
            file = os.path.basename(d.file)
            if info is None or file not in buffers:
                raise ProtocolError(f"the server sent data for '{d.file[:100]}', which is not a file of artifact '{name[:100]}'")
            buf = buffers[file]
            end = int(d.offset) + len(d.data)
            if end > len(buf):
                buf.extend(b"\0" * (end - len(buf)))
            buf[int(d.offset):end] = d.data
        if info is None:
            raise ProtocolError(f"the server sent no description of artifact '{name[:100]}'")
        artifact = Artifact(info, {k: bytes(v) for k, v in buffers.items()})
        if out is not None:
            artifact.save(out)
        return artifact

    def put(self, name: str, files: Union[str, "os.PathLike[str]", Mapping[str, FileContent]],
            metadata: Optional[Mapping[str, Any]] = None) -> ArtifactInfo:
        """Uploads an artifact, replacing one of that name.

        ``files`` is a folder (its files, not subfolders) or a mapping file name → content: bytes, a
        path, or a dict of arrays (written as safetensors). ``metadata`` is a JSON-serialisable dict.
        """
        contents: Dict[str, bytes] = {}
        if isinstance(files, (str, os.PathLike)):
            folder = Path(files)
            for p in sorted(folder.iterdir()):
                if p.is_file():
                    contents[p.name] = p.read_bytes()
        else:
            for file, content in files.items():
                if isinstance(content, (bytes, bytearray)):
                    contents[file] = bytes(content)
                elif isinstance(content, Mapping):
                    contents[file] = safetensors.dumps(content)
                else:
                    contents[file] = Path(content).read_bytes()
        header = artpb.ArtifactInfo(name=name, metadata_json=json.dumps(dict(metadata or {})),
                                    files=[artpb.ArtifactFileInfo(name=f, bytes=len(b)) for f, b in contents.items()])

        def chunks() -> Iterator[Any]:
            yield artpb.ArtifactChunk(header=header)
            for f, data in contents.items():
                view = memoryview(data)
                for offset in range(0, len(data), _UPLOAD_CHUNK):
                    yield artpb.ArtifactChunk(data=artpb.FileData(file=f, offset=offset, data=bytes(view[offset:offset + _UPLOAD_CHUNK])))

        try:
            response = self._mesh._artifacts.PutArtifact(chunks(), metadata=self._mesh._metadata, timeout=self._mesh.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return ArtifactInfo.from_proto(response)

    def delete(self, name: str) -> bool:
        """Deletes an artifact (admin role); False when there was none of that name."""
        return bool(self._mesh._unary(self._mesh._artifacts.DeleteArtifact, artpb.DeleteArtifactRequest(name=name)).deleted)
