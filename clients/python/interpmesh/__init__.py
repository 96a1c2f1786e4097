"""InterpMesh's Python client: transformer internals from a mesh, as numpy.

>>> import interpmesh
>>> mesh = interpmesh.connect("http://127.0.0.1:50050", key="...")
>>> model = mesh.model("concepts")
>>> logits, cache = model.run_with_cache("the dog is happy . what a", names_filter="blocks.*.hook_resid_post")
>>> cache["blocks.0.hook_resid_post"].shape
(1, 8, 64)

See docs/python.md.
"""
from . import safetensors
from .artifacts import Artifact, ArtifactInfo, Artifacts
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition, Internal,
                     InterpMeshError, InvalidArgument, NotFound, OutOfRange, PermissionDenied, ProtocolError,
                     ResourceExhausted, Unauthenticated, Unavailable, Unimplemented, Unknown)
from .interventions import Intervention, ablate, add, patch, scale
from .jobs import Figure, Job, JobResult, Plugin, Table
from .mesh import Mesh, connect
from .model import ActivationCache, GenerateStep, GradientOutput, Hook, Model, Receipt, RunOutput

__version__ = "0.1.0"

__all__ = [
    "connect", "Mesh", "Model", "Hook", "Receipt", "ActivationCache", "RunOutput", "GenerateStep", "GradientOutput",
    "Intervention", "add", "patch", "scale", "ablate",
    "Plugin", "Job", "JobResult", "Table", "Figure",
    "Artifacts", "Artifact", "ArtifactInfo", "safetensors",
    "InterpMeshError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated", "ProtocolError",
]
