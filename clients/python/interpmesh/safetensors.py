"""A small safetensors reader and writer (no dependency beyond numpy).

The format: an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
offsets relative to the data that follows), then the tensors' row-major little-endian bytes.
:func:`loads` returns arrays that are views of the given buffer (no copy); bfloat16 is
``ml_dtypes.bfloat16`` when that package is installed, else converted to float32.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ._wire import BFLOAT16, bfloat16_bits_to_float32

__all__ = ["loads", "load", "dumps", "save", "read_metadata"]

_DTYPES: Dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}

Buffer = Union[bytes, bytearray, memoryview]


def _header(data: Buffer) -> Tuple[Dict[str, Any], int]:
    view = memoryview(data)
    if len(view) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", view[:8])
    if n > len(view) - 8 or n > 100_000_000:
        raise ValueError(f"not a safetensors file: a header of {n} bytes in {len(view)} bytes")
    header = json.loads(bytes(view[8:8 + n]).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: the header is not a JSON object")
    return header, 8 + n


def read_metadata(data: Buffer) -> Dict[str, str]:
    """The ``__metadata__`` string map of a safetensors buffer (empty when it has none)."""
    header, _ = _header(data)
    return dict(header.get("__metadata__") or {})


def loads(data: Buffer) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors buffer, by name, as numpy arrays viewing ``data``."""
    header, start = _header(data)
    view = memoryview(data)
    out: Dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype_name = entry["dtype"]
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        if not 0 <= begin <= end <= len(view) - start:
            raise ValueError(f"safetensors tensor '{name}': offsets {begin}..{end} outside the data")
        raw = view[start + begin:start + end]
        if dtype_name == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").reshape(shape)
            out[name] = bits.view(BFLOAT16) if BFLOAT16 is not None else bfloat16_bits_to_float32(bits)
            continue
        if dtype_name not in _DTYPES:
            raise ValueError(f"safetensors tensor '{name}': unsupported dtype {dtype_name}")
        dtype = np.dtype(_DTYPES[dtype_name])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != len(raw):
            raise ValueError(f"safetensors tensor '{name}': shape {list(shape)} of {dtype_name} needs {count * dtype.itemsize} bytes, has {len(raw)}")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return out


def load(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file, by name."""
    return loads(Path(path).read_bytes())


def _dtype_name(a: np.ndarray) -> str:
    if BFLOAT16 is not None and a.dtype == BFLOAT16:
        return "BF16"
    d = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    for name, code in _DTYPES.items():
        if np.dtype(code) == d:
            return name
    raise ValueError(f"safetensors cannot hold dtype {a.dtype}")


def dumps(tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """Tensors (name → array-like) as safetensors bytes, in name order, with optional string metadata."""
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dtype_name = _dtype_name(a)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<") if dtype_name != "BF16" else a.dtype)
        header[name] = {"dtype": dtype_name, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    parts = [struct.pack("<Q", len(text)), text]
    parts.extend(a.tobytes() for a in arrays)
    return b"".join(parts)


def save(tensors: Mapping[str, Any], path: Union[str, Path], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes tensors to a safetensors file."""
    Path(path).write_bytes(dumps(tensors, metadata))
