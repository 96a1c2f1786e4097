"""Interventions: changes to a hook's activation inside the model's forward (and every generation step).

Build them with :func:`add` (steering), :func:`patch` (activation patching), :func:`scale` and
:func:`ablate`, and pass a list to ``model.run(..., interventions=[...])`` or ``model.generate``.
``hook`` is an exact hook name or a glob (``"blocks.*.hook_resid_post"``); ``positions`` are absolute
positions in the padded sequence (query positions for attention maps), ``heads`` restrict per-head
hooks, ``rows`` restrict to rows of the request's batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Sequence

from ._proto.interpmesh.v1 import model_service_pb2 as pb
from ._wire import numpy_to_tensor

__all__ = ["Intervention", "add", "patch", "scale", "ablate"]


@dataclass(frozen=True)
class Intervention:
    """One intervention; use the builder functions rather than this class.

    Attributes:
        hook: hook name or glob.
        op: ``"add"``, ``"set"``, ``"scale"``, ``"zero_ablate"`` or ``"mean_ablate"``.
        value: the array added or written (broadcast to the hook's shape), for add/set/mean_ablate.
        factor: the multiplier, for scale.
        positions, heads, rows: restrictions (empty = all).
    """

    hook: str
    op: str
    value: Any = None
    factor: float = 0.0
    positions: Sequence[int] = field(default_factory=tuple)
    heads: Sequence[int] = field(default_factory=tuple)
    rows: Sequence[int] = field(default_factory=tuple)

    def to_proto(self) -> Any:
        """The wire message."""
        op = {
            "add": pb.INTERVENTION_OP_ADD, "set": pb.INTERVENTION_OP_SET, "scale": pb.INTERVENTION_OP_SCALE,
            "zero_ablate": pb.INTERVENTION_OP_ZERO_ABLATE, "mean_ablate": pb.INTERVENTION_OP_MEAN_ABLATE,
        }[self.op]
        message = pb.Intervention(hook=self.hook, op=op, scale=float(self.factor),
                                  heads=[int(h) for h in self.heads], positions=[int(p) for p in self.positions],
                                  rows=[int(r) for r in self.rows])
        if self.value is not None:
            message.value.CopyFrom(numpy_to_tensor(self.value))
        return message

    def with_(self, **changes: Any) -> "Intervention":
        """A copy with some fields changed."""
        return replace(self, **changes)


def _ints(values: Optional[Sequence[int]]) -> Sequence[int]:
    if values is None:
        return ()
    if isinstance(values, int):
        return (int(values),)
    return tuple(int(v) for v in values)


def add(hook: str, value: Any, *, positions: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
        rows: Optional[Sequence[int]] = None, coefficient: float = 1.0) -> Intervention:
    """activation + coefficient · value (steering). ``value`` broadcasts to the hook's shape, e.g. ``[d_model]``."""
    import numpy as np

    v = np.asarray(value, dtype=np.float32)
    if coefficient != 1.0:
        v = v * np.float32(coefficient)
    return Intervention(hook, "add", value=v, positions=_ints(positions), heads=_ints(heads), rows=_ints(rows))


def patch(hook: str, value: Any, *, positions: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
          rows: Optional[Sequence[int]] = None) -> Intervention:
    """value replaces the activation (activation patching): ``[d_model]`` or the full ``[batch, pos, ...]`` activation."""
    return Intervention(hook, "set", value=value, positions=_ints(positions), heads=_ints(heads), rows=_ints(rows))


def scale(hook: str, factor: float, *, positions: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
          rows: Optional[Sequence[int]] = None) -> Intervention:
    """activation · factor."""
    return Intervention(hook, "scale", factor=float(factor), positions=_ints(positions), heads=_ints(heads), rows=_ints(rows))


def ablate(hook: str, mean: Any = None, *, positions: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
           rows: Optional[Sequence[int]] = None) -> Intervention:
    """Zero ablation, or mean ablation when ``mean`` (a mean activation you computed) is given."""
    if mean is None:
        return Intervention(hook, "zero_ablate", positions=_ints(positions), heads=_ints(heads), rows=_ints(rows))
    return Intervention(hook, "mean_ablate", value=mean, positions=_ints(positions), heads=_ints(heads), rows=_ints(rows))


def protos(interventions: Optional[Sequence[Intervention]]) -> List[Any]:
    """Wire messages of a list of interventions."""
    return [i.to_proto() for i in interventions or ()]
