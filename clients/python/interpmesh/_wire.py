"""Wire tensors and activation chunks ↔ numpy, without copies where the layout allows."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._proto.interpmesh.v1 import tensor_pb2
from .errors import ProtocolError

try:  # bfloat16 as a real numpy dtype when ml_dtypes is installed
    import ml_dtypes  # type: ignore[import-not-found, import-untyped, unused-ignore]

    BFLOAT16: Optional[np.dtype] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = None

DTYPE_NAMES: Dict[str, int] = {
    "float32": tensor_pb2.DTYPE_FLOAT32,
    "f32": tensor_pb2.DTYPE_FLOAT32,
    "bfloat16": tensor_pb2.DTYPE_BFLOAT16,
    "bf16": tensor_pb2.DTYPE_BFLOAT16,
    "float16": tensor_pb2.DTYPE_FLOAT16,
    "f16": tensor_pb2.DTYPE_FLOAT16,
}

_WIRE_NUMPY: Dict[int, np.dtype] = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_BFLOAT16: np.dtype("<u2"),  # raw bits; see to_user_dtype
    tensor_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
}


def wire_dtype(dtype: Any) -> int:
    """The proto DType of a user's dtype: a name ("float32", "bfloat16", "float16"), a numpy dtype or None (float32)."""
    if dtype is None:
        return tensor_pb2.DTYPE_FLOAT32
    if isinstance(dtype, str):
        key = dtype.lower()
        if key in DTYPE_NAMES:
            return DTYPE_NAMES[key]
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    d = np.dtype(dtype)
    if d == np.float32:
        return tensor_pb2.DTYPE_FLOAT32
    if d == np.float16:
        return tensor_pb2.DTYPE_FLOAT16
    if BFLOAT16 is not None and d == BFLOAT16:
        return tensor_pb2.DTYPE_BFLOAT16
    raise ValueError(f"dtype must be float32, bfloat16 or float16, got {d}")


def storage_dtype(wire: int) -> np.dtype:
    """The numpy dtype bytes of ``wire`` are written into (bfloat16: ml_dtypes' when present, else raw uint16)."""
    if wire == tensor_pb2.DTYPE_BFLOAT16 and BFLOAT16 is not None:
        return BFLOAT16
    try:
        return _WIRE_NUMPY[wire]
    except KeyError:
        raise ProtocolError(f"the server sent a tensor of unknown dtype {wire}") from None


def to_user_dtype(array: np.ndarray, wire: int) -> np.ndarray:
    """Raw bfloat16 bits (no ml_dtypes) become float32; everything else is returned as it is."""
    if wire == tensor_pb2.DTYPE_BFLOAT16 and BFLOAT16 is None:
        return bfloat16_bits_to_float32(array)
    return array


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 stored as uint16 → float32 (exact: bfloat16 is float32's upper half)."""
    out = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A wire Tensor as a numpy array: a read-only view of the message's bytes (no copy) except bfloat16 without ml_dtypes."""
    shape = tuple(int(s) for s in t.shape)
    array = np.frombuffer(t.data, dtype=storage_dtype(t.dtype))
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if array.size != expected:
        raise ProtocolError(f"a tensor of shape {list(shape)} came with {len(t.data)} bytes")
    return to_user_dtype(array.reshape(shape), t.dtype)


def numpy_to_tensor(value: Any, dtype: Any = None) -> Any:
    """A number, list or array as a wire Tensor: float32 unless ``dtype`` says bfloat16/float16 (integers stay int64 when dtype is 'int64')."""
    if isinstance(value, tensor_pb2.Tensor):
        return value
    if dtype == "int64":
        a = np.ascontiguousarray(value, dtype="<i8")
        return tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_INT64, shape=list(a.shape), data=a.tobytes())
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    wire = wire_dtype(dtype)
    a = np.asarray(value)
    if wire == tensor_pb2.DTYPE_BFLOAT16:
        f = np.ascontiguousarray(a, dtype="<f4")
        bits = (f.view("<u4") >> 16).astype("<u2")  # truncation; the server rounds what it computes itself
        return tensor_pb2.Tensor(dtype=wire, shape=list(f.shape), data=bits.tobytes())
    a = np.ascontiguousarray(a, dtype=_WIRE_NUMPY[wire])
    return tensor_pb2.Tensor(dtype=wire, shape=list(a.shape), data=a.tobytes())


class Chunks:
    """Puts one stream's ActivationChunks back together, as the .NET ChunkAssembler does.

    Each capture arrives as consecutive chunks (offsets 0, n, 2n ... up to ``total_bytes``), one capture
    at a time; a capture and a gradient of the same hook are different tensors. ``target(chunk)`` is
    asked, at a capture's first chunk, for a writable uint8 buffer of exactly ``total_bytes`` to fill
    (a slice of a preallocated result array, so the bytes are copied once, from the message into the
    result); it may return None to get a fresh buffer. :meth:`add` returns ``(chunk_head, buffer)``
    when a chunk completes its capture.
    """

    def __init__(self, target: Optional[Any] = None) -> None:
        self._target = target
        self._head: Any = None
        self._buffer: Optional[memoryview] = None
        self._array: Optional[np.ndarray] = None
        self._filled = 0

    @property
    def in_progress(self) -> bool:
        """True while a capture has started and not ended."""
        return self._head is not None

    def add(self, chunk: Any) -> Optional[Tuple[Any, np.ndarray]]:
        """Adds the next chunk; returns (first chunk, filled uint8 array) when this chunk ends its capture."""
        head = self._head
        if head is not None and (chunk.hook != head.hook or chunk.gradient != head.gradient or chunk.offset != self._filled):
            raise ProtocolError(
                f"a chunk of '{chunk.hook[:100]}' at byte {chunk.offset} arrived while '{head.hook[:100]}' had {self._filled} of {head.total_bytes} bytes")
        if head is None:
            if chunk.offset != 0:
                raise ProtocolError(f"the first chunk of '{chunk.hook[:100]}' starts at byte {chunk.offset}, not 0")
            total = int(chunk.total_bytes)
            shape = [int(s) for s in chunk.shape]
            itemsize = storage_dtype(chunk.dtype).itemsize
            if total < 0 or total != int(np.prod(shape, dtype=np.int64)) * itemsize:
                raise ProtocolError(f"'{chunk.hook[:100]}' of shape {shape} announces {total} bytes")
            array = self._target(chunk) if self._target is not None else None
            if array is None:
                array = np.empty(total, dtype=np.uint8)
            if array.nbytes != total:
                raise ProtocolError(f"internal: a buffer of {array.nbytes} bytes for '{chunk.hook[:100]}' of {total}")
            head = self._head = chunk
            self._array = array
            self._buffer = memoryview(array).cast("B")
            self._filled = 0
        n = len(chunk.data)
        if self._filled + n > head.total_bytes:
            raise ProtocolError(f"chunks of '{head.hook[:100]}' carry more than its {head.total_bytes} bytes")
        assert self._buffer is not None
        self._buffer[self._filled:self._filled + n] = chunk.data
        self._filled += n
        if self._filled < head.total_bytes:
            return None
        done, array = head, self._array
        self._head = self._buffer = self._array = None
        self._filled = 0
        assert array is not None
        return done, array

    def check_complete(self) -> None:
        """Raises when the stream ended inside a capture."""
        if self._head is not None:
            raise ProtocolError(f"the stream ended with '{self._head.hook[:100]}' at {self._filled} of {self._head.total_bytes} bytes")


def as_array(head: Any, raw: np.ndarray) -> np.ndarray:
    """A completed capture's uint8 bytes as an array of its dtype and shape (a view), bfloat16 → float32 without ml_dtypes."""
    shape = tuple(int(s) for s in head.shape)
    return to_user_dtype(raw.view(storage_dtype(head.dtype)).reshape(shape), head.dtype)


def glob_match(pattern: str, name: str) -> bool:
    """The server's globs: '*' any run of characters, '?' one; everything else literal."""
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == name[n]):
            p += 1
            n += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, n
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def resolve(patterns: Sequence[str], names: Sequence[str]) -> List[str]:
    """Names matching any pattern, in ``names`` order."""
    return [n for n in names if any(glob_match(p, n) for p in patterns)]


# ---- Reading activation chunks straight from the received bytes ----
#
# protobuf's Python API hands out a `bytes` field as a new bytes object: a copy of every activation
# byte before it is copied into place. The streams that carry activations are therefore received
# raw (no deserializer) and their ActivationChunk fields read here from the wire format, so `data` is
# a memoryview of the received message and its bytes are copied once, into the result array. Other
# fields (a Run's result, a Generate step's tokens) are parsed by protobuf as usual.


class ChunkView:
    """An ActivationChunk read from the wire: the same fields, ``data`` a view of the received bytes."""

    __slots__ = ("hook", "shape", "dtype", "offset", "total_bytes", "data", "gradient")

    def __init__(self) -> None:
        self.hook = ""
        self.shape: List[int] = []
        self.dtype = 0
        self.offset = 0
        self.total_bytes = 0
        self.data: Any = b""
        self.gradient = False


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("a truncated message from the server")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("a malformed varint in a message from the server")


def _skip(buf: memoryview, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise ProtocolError(f"an unsupported wire type {wire_type} in a message from the server")


def fields(buf: memoryview, start: int = 0, end: Optional[int] = None) -> Iterator[Tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field in buf[start:end]: for
    length-delimited fields the value's span, for varints the value (end unused)."""
    pos, stop = start, len(buf) if end is None else end
    while pos < stop:
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            n, pos = _varint(buf, pos)
            if pos + n > stop:
                raise ProtocolError("a truncated message from the server")
            yield number, 2, pos, pos + n
            pos += n
        elif wire_type == 0:
            value, pos = _varint(buf, pos)
            yield number, 0, value, pos
        else:
            nxt = _skip(buf, pos, wire_type)
            yield number, wire_type, pos, nxt
            pos = nxt
    if pos != stop:
        raise ProtocolError("a truncated message from the server")


def chunk_view(buf: memoryview, start: int, end: int) -> ChunkView:
    """The ActivationChunk encoded in buf[start:end]."""
    c = ChunkView()
    for number, wire_type, a, b in fields(buf, start, end):
        if number == 1 and wire_type == 2:
            c.hook = bytes(buf[a:b]).decode("utf-8")
        elif number == 2:
            if wire_type == 2:  # packed
                pos = a
                while pos < b:
                    v, pos = _varint(buf, pos)
                    c.shape.append(v)
            else:
                c.shape.append(a)
        elif number == 3 and wire_type == 0:
            c.dtype = a
        elif number == 4 and wire_type == 0:
            c.offset = a
        elif number == 5 and wire_type == 0:
            c.total_bytes = a
        elif number == 6 and wire_type == 2:
            c.data = buf[a:b]
        elif number == 7 and wire_type == 0:
            c.gradient = bool(a)
    return c


def split_message(raw: bytes, chunk_field: int) -> Tuple[Optional[ChunkView], memoryview]:
    """A raw response whose field ``chunk_field`` is an ActivationChunk: (the chunk or None, the whole message)."""
    buf = memoryview(raw)
    for number, wire_type, a, b in fields(buf):
        if number == chunk_field and wire_type == 2:
            return chunk_view(buf, a, b), buf
    return None, buf
