"""Exceptions named after gRPC status codes, carrying the server's message.

Every failed call raises a subclass of :class:`InterpMeshError` named after its gRPC status
(``INVALID_ARGUMENT`` → :class:`InvalidArgument`, ``RESOURCE_EXHAUSTED`` → :class:`ResourceExhausted`,
...). ``str(error)`` is the server's message, which names the field and says what to fix. A job that
did not succeed raises the class of its ``error_status`` with the job's error and the job attached.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

import grpc

__all__ = [
    "InterpMeshError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "ProtocolError", "from_rpc_error", "for_code",
]


class InterpMeshError(Exception):
    """Base of every error this package raises for a failed call or job.

    Attributes:
        code: the gRPC status name, e.g. ``"INVALID_ARGUMENT"``.
        message: the server's message (what to fix).
        job: for a job that did not succeed, the job (an :class:`interpmesh.Job`); else ``None``.
    """

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: Optional[str] = None, job: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.job = job

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Cancelled(InterpMeshError):
    """CANCELLED: the call or job was cancelled."""
    code = "CANCELLED"


class Unknown(InterpMeshError):
    """UNKNOWN."""
    code = "UNKNOWN"


class InvalidArgument(InterpMeshError, ValueError):
    """INVALID_ARGUMENT: the request is wrong; the message names the field and what to fix."""
    code = "INVALID_ARGUMENT"


class DeadlineExceeded(InterpMeshError, TimeoutError):
    """DEADLINE_EXCEEDED: the call or job ran over its time limit."""
    code = "DEADLINE_EXCEEDED"


class NotFound(InterpMeshError):
    """NOT_FOUND: no such plugin, job, artifact or model."""
    code = "NOT_FOUND"


class AlreadyExists(InterpMeshError):
    """ALREADY_EXISTS."""
    code = "ALREADY_EXISTS"


class PermissionDenied(InterpMeshError):
    """PERMISSION_DENIED: the API key lacks the role this call needs."""
    code = "PERMISSION_DENIED"


class ResourceExhausted(InterpMeshError):
    """RESOURCE_EXHAUSTED: over a server limit (batch, capture budget, rate, a stalled reader)."""
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(InterpMeshError):
    """FAILED_PRECONDITION."""
    code = "FAILED_PRECONDITION"


class Aborted(InterpMeshError):
    """ABORTED: e.g. a job whose workers kept dying."""
    code = "ABORTED"


class OutOfRange(InterpMeshError):
    """OUT_OF_RANGE."""
    code = "OUT_OF_RANGE"


class Unimplemented(InterpMeshError):
    """UNIMPLEMENTED: the server does not offer this call."""
    code = "UNIMPLEMENTED"


class Internal(InterpMeshError):
    """INTERNAL: a server bug or environment failure (the message points to the server log)."""
    code = "INTERNAL"


class Unavailable(InterpMeshError):
    """UNAVAILABLE: the server (or a model service behind it) cannot be reached or is loading."""
    code = "UNAVAILABLE"


class DataLoss(InterpMeshError):
    """DATA_LOSS."""
    code = "DATA_LOSS"


class Unauthenticated(InterpMeshError):
    """UNAUTHENTICATED: no API key, or an unknown one."""
    code = "UNAUTHENTICATED"


class ProtocolError(InterpMeshError):
    """The server sent something this client cannot put together (e.g. chunks out of order)."""
    code = "DATA_LOSS"


_BY_CODE: Dict[str, Type[InterpMeshError]] = {
    cls.code: cls for cls in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists, PermissionDenied,
        ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented, Internal, Unavailable,
        DataLoss, Unauthenticated)
}


def for_code(code: str) -> Type[InterpMeshError]:
    """The exception class of a gRPC status name such as ``"NOT_FOUND"`` (:class:`InterpMeshError` for others)."""
    return _BY_CODE.get(code, InterpMeshError)


def from_rpc_error(error: grpc.RpcError) -> InterpMeshError:
    """The :class:`InterpMeshError` subclass for a grpc error, with the server's message."""
    status = error.code() if hasattr(error, "code") else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    details = error.details() if hasattr(error, "details") else None
    message = details or str(error)
    return for_code(name)(message, code=name)
