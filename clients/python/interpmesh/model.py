"""One model behind the mesh: its description, tokenizer, forward passes with caches and
interventions, generation, gradients and weights — decoded into numpy arrays."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import grpc
import numpy as np

from . import _wire
from ._proto.interpmesh.v1 import model_service_pb2 as pb
from ._proto.interpmesh.v1 import tensor_pb2
from .errors import InvalidArgument, ProtocolError, ResourceExhausted, from_rpc_error
from .interventions import Intervention

if TYPE_CHECKING:  # pragma: no cover
    from .mesh import Mesh

__all__ = ["Model", "Hook", "Receipt", "ActivationCache", "RunOutput", "GenerateStep", "GradientOutput", "Inputs"]

#: What the calls accept as input: a text, a list of texts, one list of token ids, a list of id lists,
#: or a 1-D/2-D integer array.
Inputs = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]

_POS_DIMS = ("pos", "query_pos")


@dataclass(frozen=True)
class Hook:
    """A hook point: TransformerLens name, shape template (``"[batch, pos, d_model]"``), block
    (-1 embeddings, n_layers final norm) and the template's dimension names."""

    name: str
    shape: str
    layer: int
    dims: Tuple[str, ...]


@dataclass
class Receipt:
    """What one intervention did: the hooks it matched, elements changed and the L2 norm of the change."""

    index: int
    hook: str
    matched_hooks: List[str]
    elements_changed: int
    l2_norm: float

    @staticmethod
    def from_proto(r: Any) -> "Receipt":
        return Receipt(int(r.index), r.hook, list(r.matched_hooks), int(r.elements_changed), float(r.l2_norm))


class ActivationCache(Dict[str, np.ndarray]):
    """Hook name → activation (numpy), as TransformerLens' cache: ``cache["blocks.0.hook_resid_post"]``.

    Also carries ``tokens`` ([batch, pos] int64, the padded ids run) and ``attention_mask``
    ([batch, pos], 1 for real tokens).
    """

    tokens: Optional[np.ndarray] = None
    attention_mask: Optional[np.ndarray] = None

    def __getitem__(self, key: Union[str, Tuple[str, int]]) -> np.ndarray:  # type: ignore[override]
        """``cache[name]``, or TransformerLens' shorthand ``cache["resid_post", 3]`` / ``cache["pattern", 0]``."""
        if isinstance(key, tuple):
            return super().__getitem__(self.act_name(*key))
        return super().__getitem__(key)

    def act_name(self, name: str, layer: Optional[int] = None) -> str:
        """The full hook name of a shorthand (TransformerLens' ``utils.get_act_name``): ``("resid_post", 3)``
        → ``"blocks.3.hook_resid_post"``, ``("pattern", 0)`` → ``"blocks.0.attn.hook_pattern"``,
        ``("post", 1)`` → ``"blocks.1.mlp.hook_post"``, ``("embed", None)`` → ``"hook_embed"``."""
        aliases = {"attn": "pattern", "attn_logits": "attn_scores", "resid": "resid_post"}
        short = aliases.get(name, name)
        if layer is None:
            candidates = [f"hook_{short}", short]
        else:
            candidates = [f"blocks.{layer}.hook_{short}", f"blocks.{layer}.attn.hook_{short}", f"blocks.{layer}.mlp.hook_{short}",
                          f"blocks.{layer}.{short}"]
        for candidate in candidates:
            if super().__contains__(candidate):
                return candidate
        raise KeyError(f"no captured hook for {name!r}" + (f" in layer {layer}" if layer is not None else "") + f"; tried {candidates}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items())
        return f"ActivationCache({{{inner}}})"


@dataclass
class RunOutput:
    """The result of :meth:`Model.run`.

    Attributes:
        logits: ``[batch, 1, vocab]`` (``logits="last"``), ``[batch, pos, vocab]`` (``"all"``) or None.
        loss: mean next-token cross-entropy over real tokens (``loss=True``), else None.
        receipts: one per intervention, in request order.
        cache: captured activations (``capture=...``).
        tokens, attention_mask: the padded ids run and their mask.
        top_k_ids, top_k_values: ``[batch, pos, k]`` when ``top_k`` was asked for.
        forward_batch_sizes: each request's forward batch size (the request may have been split).
    """

    logits: Optional[np.ndarray]
    loss: Optional[float]
    receipts: List[Receipt]
    cache: ActivationCache
    tokens: Optional[np.ndarray]
    attention_mask: Optional[np.ndarray]
    top_k_ids: Optional[np.ndarray] = None
    top_k_values: Optional[np.ndarray] = None
    forward_batch_sizes: List[int] = field(default_factory=list)


@dataclass
class GradientOutput:
    """The result of :meth:`Model.gradients`: d metric / d activation per hook, the summed metric and
    the per-row metrics, plus any activations captured alongside."""

    gradients: Dict[str, np.ndarray]
    metric: float
    row_metrics: List[float]
    cache: ActivationCache
    receipts: List[Receipt]

    def __getitem__(self, hook: str) -> np.ndarray:
        return self.gradients[hook]


@dataclass
class GenerateStep:
    """One generation step, as it streams in.

    Attributes:
        step: 0-based step.
        tokens: the id chosen for each prompt (-1 for prompts that already stopped).
        texts: decoded text of each token ('' for -1).
        captures: hook → activation captured during this step (step 0 covers the prompts).
        final: True on the last step.
        receipts: on the last step, one per intervention.
        prompt_tokens: on step 0, the prompt ids used.
    """

    step: int
    tokens: List[int]
    texts: List[str]
    captures: Dict[str, np.ndarray]
    final: bool
    receipts: List[Receipt]
    prompt_tokens: List[List[int]]


@dataclass
class _Batch:
    rows: Tuple[int, int]
    length: int  # padded length of this batch


class Model:
    """A model served by the mesh, by name (``mesh.model("concepts")``).

    Calls go through the gateway with the ``interpmesh-model`` header; requests larger than the
    server's limits (``info.limits``: ``max_batch`` inputs, ``max_capture_bytes`` of captures) are
    split into several requests and their results put back together, so results look like one call.
    """

    #: Requests of a split call in flight at once (1: one after the other).
    concurrency: int = 2

    def __init__(self, mesh: "Mesh", name: Optional[str]) -> None:
        self._mesh = mesh
        self.name = name
        self._info: Any = None
        self._hooks: Optional[Dict[str, Hook]] = None
        metadata = list(mesh._metadata)
        if name:
            metadata.append(("interpmesh-model", name))
        self._metadata: Tuple[Tuple[str, str], ...] = tuple(metadata)
        self._stub = mesh._model_stub
        # The streams that carry activations, received raw: chunks are read from the wire bytes so that
        # activation data is copied once, into place (_wire.split_message).
        channel = mesh._channel
        self._run_raw = channel.unary_stream("/interpmesh.v1.ModelService/Run", request_serializer=pb.RunRequest.SerializeToString)
        self._weights_raw = channel.unary_stream("/interpmesh.v1.ModelService/GetWeights", request_serializer=pb.GetWeightsRequest.SerializeToString)
        self._generate_raw = channel.unary_stream("/interpmesh.v1.ModelService/Generate", request_serializer=pb.GenerateRequest.SerializeToString)

    def __repr__(self) -> str:
        return f"Model({self.name!r} at {self._mesh.url})"

    # ---- description ----

    @property
    def info(self) -> Any:
        """The ModelInfo message (architecture, dimensions, dtype, hooks, tokenizer, ``limits``), fetched once."""
        if self._info is None:
            self._info = self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest())
        return self._info

    @property
    def limits(self) -> Any:
        """The server's ServingLimits (max_batch, max_capture_bytes, max_chunk_bytes, ...)."""
        return self.info.limits

    @property
    def hooks(self) -> Dict[str, Hook]:
        """Every hook point, in forward order: name → :class:`Hook` (shape template, layer, dims)."""
        if self._hooks is None:
            self._hooks = {h.name: Hook(h.name, h.shape, int(h.layer), tuple(h.dims)) for h in self.info.hooks}
        return self._hooks

    @property
    def cfg(self) -> Dict[str, Any]:
        """TransformerLens-style dimensions: n_layers, d_model, n_heads, d_head, d_mlp, d_vocab, n_ctx."""
        i = self.info
        return {"n_layers": i.n_layers, "d_model": i.d_model, "n_heads": i.n_heads, "n_key_value_heads": i.n_kv_heads,
                "d_head": i.d_head, "d_mlp": i.d_mlp, "d_vocab": i.vocab_size, "n_ctx": i.context_length,
                "architecture": i.architecture, "model_type": i.model_type}

    # ---- tokenizer ----

    def to_tokens(self, text: Union[str, Sequence[str]]) -> Union[List[int], List[List[int]]]:
        """Token ids of a text (a list of ints) or of each text of a list (a list of lists), BOS as the model's tokenizer adds it."""
        texts = [text] if isinstance(text, str) else list(text)
        response = self._unary(self._stub.Tokenize, pb.TokenizeRequest(texts=texts))
        ids = [list(t.ids) for t in response.tokens]
        return ids[0] if isinstance(text, str) else ids

    def to_string(self, tokens: Any) -> Union[str, List[str]]:
        """Text of one id sequence (a str), or of each sequence of a 2-D input (a list of str)."""
        a = np.asarray(tokens, dtype=np.int64) if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], (list, tuple, np.ndarray)) else None
        if a is not None and a.ndim <= 1:
            seqs = [[int(x) for x in np.atleast_1d(a)]]
            single = True
        else:
            seqs = [[int(x) for x in s] for s in tokens]
            single = False
        response = self._unary(self._stub.Detokenize, pb.DetokenizeRequest(tokens=[pb.TokenIds(ids=s) for s in seqs]))
        texts = list(response.texts)
        return texts[0] if single else texts

    def to_str_tokens(self, text: str) -> List[str]:
        """The tokens of a text, each decoded on its own."""
        ids = self.to_tokens(text)
        return list(self.to_string([[i] for i in ids]))  # type: ignore[arg-type, union-attr]

    # ---- forward ----

    def __call__(self, inputs: Inputs, *, padding_side: str = "left", interventions: Optional[Sequence[Intervention]] = None) -> np.ndarray:
        """Logits at every position, ``[batch, pos, vocab]`` — TransformerLens' ``model(tokens)``."""
        logits = self.run(inputs, logits="all", padding_side=padding_side, interventions=interventions).logits
        assert logits is not None
        return logits

    def run_with_cache(self, inputs: Inputs, names_filter: Union[None, str, Sequence[str], Callable[[str], bool]] = None, *,
                       padding_side: str = "left", dtype: Any = "float32", logits: str = "all", positions: Any = "all",
                       reduce: Optional[str] = None, interventions: Optional[Sequence[Intervention]] = None,
                       ) -> Tuple[Optional[np.ndarray], ActivationCache]:
        """One forward with activations captured, TransformerLens' ``run_with_cache``.

        Args:
            inputs: a text, texts, token ids or a batch of them (see :data:`Inputs`).
            names_filter: hook names or globs (``"blocks.*.hook_resid_post"``), a predicate on names,
                or None for every hook.
            padding_side: ``"left"`` (default) or ``"right"``; shorter inputs are padded (padding never
                influences real tokens).
            dtype: ``"float32"``, ``"bfloat16"`` (numpy arrays of ``ml_dtypes.bfloat16`` when that is
                installed, else float32) or ``"float16"``.
            logits: ``"all"`` ([batch, pos, vocab]), ``"last"`` ([batch, 1, vocab]) or ``"none"``.
            positions: ``"all"``, ``"last"`` or explicit indices into the padded sequence (negative count
                from the end; with several requests each is padded on its own, so use negative indices
                with left padding).
            reduce: ``"mean"`` averages over the selected positions.
            interventions: applied during the forward.

        Returns:
            ``(logits, cache)``; ``cache[name]`` is a numpy array, ``cache.tokens`` and
            ``cache.attention_mask`` the padded ids and mask. Requests over the server's limits are
            split; padding positions a split request did not compute hold zeros.
        """
        out = self.run(inputs, capture=self._names(names_filter), interventions=interventions, logits=logits,
                       padding_side=padding_side, dtype=dtype, positions=positions, reduce=reduce)
        return out.logits, out.cache

    def run(self, inputs: Inputs, *, interventions: Optional[Sequence[Intervention]] = None, logits: str = "last",
            top_k: int = 0, loss: bool = False, capture: Union[None, str, Sequence[str]] = None,
            padding_side: str = "left", dtype: Any = "float32", positions: Any = "all", reduce: Optional[str] = None,
            ) -> RunOutput:
        """One forward with interventions: logits, loss, receipts and optional captures.

        Args:
            inputs: a text, texts, token ids or a batch of them.
            interventions: from :func:`interpmesh.add`, :func:`~interpmesh.patch`, :func:`~interpmesh.scale`,
                :func:`~interpmesh.ablate`.
            logits: ``"last"`` (default), ``"all"`` or ``"none"``.
            top_k: when > 0, only the top-k ids and values per position (``top_k_ids``, ``top_k_values``).
            loss: also the mean next-token cross-entropy over real tokens.
            capture: hook names or globs to capture (``out.cache``).
            padding_side, dtype, positions, reduce: as for :meth:`run_with_cache`.
        """
        ids = self._token_lists(inputs)
        patterns = [] if capture is None else ([capture] if isinstance(capture, str) else list(capture))
        names = list(self.hooks)
        if any(not _wire.resolve([p], names) for p in patterns):
            # A name or glob that matches no hook: send the request as it is, for the server to name the
            # problem (unknown hook, the closest valid names).
            return self._execute(ids, patterns, interventions, logits, top_k, loss, padding_side, dtype, positions, reduce, split=False)
        hooks = _wire.resolve(patterns, names)
        return self._execute(ids, hooks, interventions, logits, top_k, loss, padding_side, dtype, positions, reduce, split=True)

    def gradients(self, inputs: Inputs, hooks: Union[str, Sequence[str]], *, loss: bool = False, logit: Any = None,
                  log_prob: Any = None, logit_diff: Optional[Tuple[Any, Any]] = None, position: Optional[int] = None,
                  positions: Any = "all", dtype: Any = "float32", interventions: Optional[Sequence[Intervention]] = None,
                  capture: Union[None, str, Sequence[str]] = None, padding_side: str = "left") -> GradientOutput:
        """The gradient of a scalar metric of the forward with respect to hooks' activations (RunRequest.gradient).

        Give exactly one metric: ``loss=True`` (each row's mean next-token loss), ``logit=TOKENS`` or
        ``log_prob=TOKENS`` (one token id for every row or one per row, at ``position`` — default each
        row's last real token) or ``logit_diff=(correct, incorrect)`` (token sets: one set for every row
        or one per row). The metric is computed per row and summed, so row r's gradient is that row's
        own metric's gradient. Interventions apply first (the gradient of the patched forward).
        """
        ids = self._token_lists(inputs)
        g = pb.GradientRequest(hooks=[hooks] if isinstance(hooks, str) else list(hooks),
                               positions=self._positions(positions), dtype=_wire.wire_dtype(dtype))
        chosen = [name for name, v in (("loss", loss or None), ("logit", logit), ("log_prob", log_prob), ("logit_diff", logit_diff)) if v is not None]
        if len(chosen) != 1:
            raise InvalidArgument(f"gradients: give exactly one metric (loss=True, logit=, log_prob= or logit_diff=), got {chosen or 'none'}")
        if loss:
            g.loss = True
        elif logit is not None or log_prob is not None:
            target = pb.TokenTarget(tokens=[int(t) for t in np.atleast_1d(np.asarray(logit if logit is not None else log_prob))])
            if position is not None:
                target.position.value = int(position)
            (g.logit if logit is not None else g.log_prob).CopyFrom(target)
        else:
            assert logit_diff is not None
            correct, incorrect = logit_diff

            def sets(x: Any) -> List[Any]:
                a = x if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple, np.ndarray)) else [x]
                return [pb.TokenSet(ids=[int(t) for t in np.atleast_1d(np.asarray(s))]) for s in a]

            g.logit_difference.CopyFrom(pb.LogitDifference(correct=sets(correct), incorrect=sets(incorrect)))
        captures = [] if capture is None else ([capture] if isinstance(capture, str) else list(capture))
        plan = self._gradient_plan(ids, list(g.hooks), captures, positions, dtype)
        if plan is None:
            request = self._request(ids, captures, interventions, "none", 0, False, padding_side, dtype, positions, None)
            request.gradient.CopyFrom(g)
            out, tokens, mask = self._gradient_call(request)
            out.cache.tokens, out.cache.attention_mask = tokens, mask
            return out
        # Over the server's limits: rows in several requests, per-row targets sliced, results put together.
        rows_per, hook_dims, selected = plan
        n, length = len(ids), max(len(s) for s in ids)
        lengths = [len(s) for s in ids]
        storage = _wire.storage_dtype(_wire.wire_dtype(dtype))
        all_positions = positions is None or (isinstance(positions, str) and positions == "all")
        grads: Dict[str, np.ndarray] = {}
        cache = ActivationCache()
        tokens = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        metric, row_metrics = 0.0, []
        receipts: Dict[int, Receipt] = {}
        for r0 in range(0, n, rows_per):
            r1 = min(r0 + rows_per, n)
            batch_length = max(lengths[r0:r1])
            offset = length - batch_length if padding_side == "left" else 0
            local, index_map = [], []
            for k, iv in enumerate(interventions or ()):
                sliced = self._slice(iv, n, r0, r1, length, batch_length, offset)
                if sliced is not None:
                    local.append(sliced)
                    index_map.append(k)
            part = pb.GradientRequest()
            part.CopyFrom(g)
            for target in (part.logit, part.log_prob):
                if len(target.tokens) == n and n > 1:
                    del target.tokens[:]
                    target.tokens.extend(g.logit.tokens[r0:r1] if target is part.logit else g.log_prob.tokens[r0:r1])
                if target.HasField("position") and target.position.value >= 0 and offset:
                    shifted = target.position.value - offset
                    if shifted < 0:
                        raise InvalidArgument(f"gradients: position {target.position.value} is padding for inputs {r0}..{r1 - 1}, which are "
                                              f"sent as a request of their own over the server's limits; use a negative position or padding_side='right'")
                    target.position.value = shifted
            if part.HasField("logit_difference"):
                for field_name in ("correct", "incorrect"):
                    given = getattr(g.logit_difference, field_name)
                    if len(given) == n and n > 1:
                        dest_sets = getattr(part.logit_difference, field_name)
                        del dest_sets[:]
                        dest_sets.extend(given[r0:r1])
            request = self._request(ids[r0:r1], captures, local, "none", 0, False, padding_side, dtype, positions, None)
            request.gradient.CopyFrom(part)
            out, t, m = self._gradient_call(request)
            for source, dest_map in ((out.gradients, grads), (out.cache, cache)):
                for hook, value in source.items():
                    dims = hook_dims[hook]
                    if hook not in dest_map:
                        dest_map[hook] = np.zeros(self._dims(hook, n, selected, length), dtype=storage)
                    _place(dest_map[hook], value, r0, dims, offset, all_positions)
            if t is not None:
                tokens[r0:r1, offset:offset + t.shape[1]] = t
            if m is not None:
                mask[r0:r1, offset:offset + m.shape[1]] = m
            metric += out.metric
            row_metrics.extend(out.row_metrics)
            for got in out.receipts:
                _merge_receipt(receipts, index_map[got.index] if got.index < len(index_map) else got.index, got)
        for k, iv in enumerate(interventions or ()):
            receipts.setdefault(k, Receipt(k, iv.hook, [], 0, 0.0))
        wire = _wire.wire_dtype(dtype)
        cache = ActivationCache({h: _wire.to_user_dtype(v, wire) for h, v in cache.items()})
        cache.tokens, cache.attention_mask = tokens, mask
        return GradientOutput({h: _wire.to_user_dtype(v, wire) for h, v in grads.items()}, metric, row_metrics, cache,
                              [receipts[k] for k in sorted(receipts)])

    def _gradient_plan(self, ids: List[List[int]], hooks: List[str], captures: List[str], positions: Any,
                       dtype: Any) -> Optional[Tuple[int, Dict[str, Tuple[str, ...]], int]]:
        """Rows per request when a gradient request must be split over max_batch or the capture budget
        (which gradients count against), with each hook's dims; None when one request will do (or when a
        name matches no hook: then the server names it)."""
        names = list(self.hooks)
        patterns = hooks + captures
        if any(not _wire.resolve([p], names) for p in patterns):
            return None
        n, length = len(ids), max(len(s) for s in ids)
        if isinstance(positions, str) and positions == "last":
            selected = 1
        elif positions is None or (isinstance(positions, str) and positions == "all"):
            selected = length
        else:
            selected = len(np.atleast_1d(positions))
        itemsize = 4 if _wire.wire_dtype(dtype) == tensor_pb2.DTYPE_FLOAT32 else 2
        resolved = _wire.resolve(hooks, names) + _wire.resolve(captures, names)
        per_row = sum(int(np.prod(self._dims(h, 1, selected, length), dtype=np.int64)) * itemsize for h in resolved)
        max_batch = max(1, int(self.limits.max_batch) or n)
        budget = int(self.limits.max_capture_bytes) or (1 << 62)
        rows = max(1, min(max_batch, budget // per_row if per_row else max_batch))
        if rows >= n:
            return None
        return rows, {h: self.hooks[h].dims for h in resolved}, selected

    def _gradient_call(self, request: Any) -> Tuple[GradientOutput, Optional[np.ndarray], Optional[np.ndarray]]:
        grads: Dict[str, np.ndarray] = {}
        cache = ActivationCache()
        result: Any = None
        assembler = _wire.Chunks()
        for received in self._stream(self._run_raw, request):
            chunk, _ = _wire.split_message(received, 1)
            if chunk is not None:
                done = assembler.add(chunk)
                if done is not None:
                    head, raw = done
                    (grads if head.gradient else cache)[head.hook] = _wire.as_array(head, raw)
                continue
            message = pb.RunResponse.FromString(received)
            if message.HasField("result"):
                result = message.result
        assembler.check_complete()
        if result is None:
            raise _protocol_error("the Run stream ended without its result")
        tokens = _wire.tensor_to_numpy(result.tokens) if result.HasField("tokens") else None
        mask = _wire.tensor_to_numpy(result.attention_mask) if result.HasField("attention_mask") else None
        return (GradientOutput(grads, float(result.metric.value), list(result.row_metrics), cache,
                               [Receipt.from_proto(r) for r in result.receipts]), tokens, mask)

    def weights(self, names: Union[str, Sequence[str]], dtype: Any = "float32") -> Dict[str, np.ndarray]:
        """Parameters by TransformerLens name or glob (``"blocks.*.attn.W_O"``), unprocessed, as numpy arrays in model order."""
        request = pb.GetWeightsRequest(names=[names] if isinstance(names, str) else list(names), dtype=_wire.wire_dtype(dtype))
        out: Dict[str, np.ndarray] = {}
        assembler = _wire.Chunks()
        for received in self._stream(self._weights_raw, request):
            chunk, _ = _wire.split_message(received, 1)
            if chunk is None:
                continue
            done = assembler.add(chunk)
            if done is not None:
                out[done[0].hook] = _wire.as_array(*done)
        assembler.check_complete()
        return out

    # ---- generation ----

    def generate(self, prompts: Inputs, *, max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 0.0, seed: int = 0, stop_ids: Optional[Sequence[int]] = None, no_stop: bool = False,
                 interventions: Optional[Sequence[Intervention]] = None, capture: Union[None, str, Sequence[str]] = None,
                 capture_dtype: Any = "float32", buffer: bool = True) -> Iterator[GenerateStep]:
        """Generates, yielding each step as it streams in: tokens, texts and the step's captures.

        Interventions apply at every step, prompt included. ``capture`` (hook names or globs) is
        captured at every step: step 0 covers the (left-padded) prompts, each later step the one new
        token per row. A background thread reads the stream as fast as it arrives, so a loop body that
        takes long (plotting, a debugger) never stalls the server; ``buffer=False`` reads only as the
        loop asks (the server then pauses the generation while output waits, and ends a call unread for
        its stall timeout). Leaving the loop early cancels the generation.
        """
        request = pb.GenerateRequest(
            prompts=[pb.Input(tokens=pb.TokenIds(ids=s)) if not isinstance(s, str) else pb.Input(text=s) for s in self._prompt_list(prompts)],
            max_new_tokens=int(max_new_tokens),
            sampling=pb.SamplingParameters(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed)),
            stop_token_ids=[int(i) for i in stop_ids or ()], no_default_stop=bool(no_stop),
            interventions=[i.to_proto() for i in interventions or ()])
        if capture is not None:
            request.captures.append(pb.Capture(hooks=[capture] if isinstance(capture, str) else list(capture), dtype=_wire.wire_dtype(capture_dtype)))
        return self._generate(request, buffer)

    def _generate(self, request: Any, buffer: bool) -> Iterator[GenerateStep]:
        call = self._generate_raw(request, metadata=self._metadata)
        messages: Iterator[Any] = _background(call) if buffer else _translated(call)
        assembler = _wire.Chunks()
        captures: Dict[str, np.ndarray] = {}
        prompt_tokens: List[List[int]] = []
        try:
            for received in messages:
                chunk, _ = _wire.split_message(received, 5)
                if chunk is not None:
                    done = assembler.add(chunk)
                    if done is not None:
                        captures[done[0].hook] = _wire.as_array(*done)
                    continue
                m = pb.GenerateResponse.FromString(received)
                if m.prompt_tokens:
                    prompt_tokens = [list(t.ids) for t in m.prompt_tokens]
                step = GenerateStep(int(m.step), list(m.token_ids), list(m.texts), captures, bool(m.final),
                                    [Receipt.from_proto(r) for r in m.receipts], prompt_tokens if m.step == 0 else [])
                captures = {}
                yield step
            assembler.check_complete()
        finally:
            call.cancel()

    # ---- plumbing ----

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._mesh.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        call = method(request, metadata=self._metadata)
        try:
            yield from _translated(call)
        finally:
            call.cancel()

    def _names(self, names_filter: Union[None, str, Sequence[str], Callable[[str], bool]]) -> Union[str, List[str]]:
        if names_filter is None:
            return list(self.hooks)
        if callable(names_filter) and not isinstance(names_filter, str):
            return [n for n in self.hooks if names_filter(n)]
        return names_filter if isinstance(names_filter, str) else list(names_filter)

    def _prompt_list(self, inputs: Inputs) -> List[Union[str, List[int]]]:
        if isinstance(inputs, str):
            return [inputs]
        if isinstance(inputs, np.ndarray):
            a = inputs.astype(np.int64)
            return [[int(x) for x in row] for row in (a[None, :] if a.ndim == 1 else a)]
        items: List[Any] = list(inputs)
        if not items:
            raise InvalidArgument("inputs: give at least one text or token-id sequence")
        if all(isinstance(x, (int, np.integer)) for x in items):
            return [[int(x) for x in items]]
        return [x if isinstance(x, str) else [int(t) for t in x] for x in items]

    def _token_lists(self, inputs: Inputs) -> List[List[int]]:
        """Every input as token ids (texts tokenized in one call), so batches can be planned."""
        items = self._prompt_list(inputs)
        texts = [x for x in items if isinstance(x, str)]
        if texts:
            tokenized: Iterator[Any] = iter(self.to_tokens(texts))
            return [list(next(tokenized)) if isinstance(x, str) else x for x in items]
        return items  # type: ignore[return-value]

    @staticmethod
    def _positions(positions: Any) -> Any:
        if positions is None or (isinstance(positions, str) and positions == "all"):
            return pb.PositionSelection(all=True)
        if isinstance(positions, str):
            if positions == "last":
                return pb.PositionSelection(last=True)
            raise InvalidArgument(f"positions must be 'all', 'last' or a list of indices, got {positions!r}")
        return pb.PositionSelection(indices=pb.TokenIds(ids=[int(p) for p in np.atleast_1d(positions)]))

    def _request(self, ids: List[List[int]], hooks: Sequence[str], interventions: Optional[Sequence[Intervention]],
                 logits: str, top_k: int, loss: bool, padding_side: str, dtype: Any, positions: Any, reduce: Optional[str]) -> Any:
        modes = {"none": pb.LogitsRequest.MODE_NONE, "last": pb.LogitsRequest.MODE_LAST, "all": pb.LogitsRequest.MODE_ALL}
        if logits not in modes:
            raise InvalidArgument(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        if padding_side not in ("left", "right"):
            raise InvalidArgument(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if reduce not in (None, "mean"):
            raise InvalidArgument(f"reduce must be None or 'mean', got {reduce!r}")
        request = pb.RunRequest(
            inputs=[pb.Input(tokens=pb.TokenIds(ids=s)) for s in ids],
            interventions=[i.to_proto() for i in interventions or ()],
            logits=pb.LogitsRequest(mode=modes[logits], top_k=int(top_k)), loss=bool(loss),
            padding=pb.PADDING_LEFT if padding_side == "left" else pb.PADDING_RIGHT)
        if hooks:
            request.captures.append(pb.Capture(hooks=list(hooks), positions=self._positions(positions), dtype=_wire.wire_dtype(dtype),
                                               reduction=pb.REDUCTION_MEAN if reduce == "mean" else pb.REDUCTION_NONE))
        return request

    def _dims(self, hook: str, batch: int, selected: int, length: int) -> List[int]:
        i = self.info
        sizes = {"batch": batch, "pos": selected, "query_pos": selected, "key_pos": length, "head": i.n_heads,
                 "kv_head": i.n_kv_heads, "d_head": i.d_head, "d_model": i.d_model, "d_mlp": i.d_mlp, "d_vocab": i.vocab_size}
        return [int(d) if d.isdigit() else int(sizes.get(d, 1)) for d in self.hooks[hook].dims]

    def _execute(self, ids: List[List[int]], hooks: List[str], interventions: Optional[Sequence[Intervention]], logits: str,
                 top_k: int, loss: bool, padding_side: str, dtype: Any, positions: Any, reduce: Optional[str], split: bool) -> RunOutput:
        n = len(ids)
        if n == 0:
            raise InvalidArgument("inputs: give at least one text or token-id sequence")
        lengths = [len(s) for s in ids]
        length = max(lengths)
        wire = _wire.wire_dtype(dtype)
        itemsize = 4 if wire == tensor_pb2.DTYPE_FLOAT32 else 2
        all_positions = positions is None or (isinstance(positions, str) and positions == "all")
        if reduce == "mean" or (isinstance(positions, str) and positions == "last"):
            selected = 1
        elif all_positions:
            selected = length
        else:
            selected = len(np.atleast_1d(positions))
        limits = self.limits
        max_batch = max(1, int(limits.max_batch) or n)
        budget = int(limits.max_capture_bytes) or (1 << 62)

        # Rows per request and groups of hooks such that each request's captures fit the budget, choosing
        # the plan with the fewest forwards (groups x requests per group; each group is a forward of its own).
        groups: List[List[str]] = [[]]
        rows_per = max_batch
        if split and hooks:
            per_row = {h: int(np.prod(self._dims(h, 1, selected, length), dtype=np.int64)) * itemsize for h in hooks}
            largest = max(per_row, key=lambda h: per_row[h])
            if per_row[largest] > budget:
                raise ResourceExhausted(
                    f"capturing '{largest}' for one input needs {per_row[largest]:,} bytes, over the server's per-request budget of "
                    f"{budget:,}; capture fewer positions (positions='last' or indices), bfloat16, or shorter inputs")
            best: Optional[Tuple[int, int, List[List[str]]]] = None
            for rows in range(min(max_batch, n), 0, -1):
                cap = budget // rows
                if per_row[largest] > cap:
                    continue
                packed: List[List[str]] = [[]]
                used = 0
                for h in hooks:
                    if used + per_row[h] > cap and packed[-1]:
                        packed.append([])
                        used = 0
                    packed[-1].append(h)
                    used += per_row[h]
                cost = len(packed) * -(-n // rows)
                if best is None or cost < best[0]:
                    best = (cost, rows, packed)
            assert best is not None
            _, rows_per, groups = best
        elif not split:
            groups, rows_per = [list(hooks)], n
        batches = [_Batch((r, min(r + rows_per, n)), max(lengths[r:r + rows_per])) for r in range(0, n, rows_per)]
        if len(batches) > 1 and interventions and any(_per_row_value(iv, n) for iv in interventions):
            # Values with a batch dimension are sliced per request below; that needs the hook's layout.
            for iv in interventions:
                if _per_row_value(iv, n) and iv.hook not in self.hooks:
                    raise InvalidArgument(f"interventions: '{iv.hook[:100]}' has a per-row value and the request is split "
                                          f"over the server's limits ({max_batch} inputs); name one hook exactly, not a glob")

        gaps = any(b.length != length for b in batches)
        cache = ActivationCache()
        targets: Dict[str, np.ndarray] = {}
        storage = _wire.storage_dtype(wire)
        for h in hooks if split else []:
            shape = self._dims(h, n, selected, length)
            targets[h] = (np.zeros if gaps else np.empty)(shape, dtype=storage)

        out_logits: Optional[np.ndarray] = None
        top_ids: Optional[np.ndarray] = None
        top_values: Optional[np.ndarray] = None
        tokens = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        loss_sum, loss_count = 0.0, 0
        receipts: Dict[int, Receipt] = {}
        sizes: List[int] = []

        def fetch(gi: int, batch: _Batch) -> Tuple[Any, List[int]]:
            """Sends one request of the plan and streams its captures into place; returns its result."""
            group = groups[gi]
            r0, r1 = batch.rows
            offset = length - batch.length if padding_side == "left" else 0
            local: List[Intervention] = []
            index_map: List[int] = []
            for k, iv in enumerate(interventions or ()):
                sliced = iv if len(batches) == 1 else self._slice(iv, n, r0, r1, length, batch.length, offset)
                if sliced is not None:
                    local.append(sliced)
                    index_map.append(k)
            first = gi == 0
            request = self._request(ids[r0:r1], group, local, logits if first else "none", top_k if first else 0,
                                    loss and first, padding_side, dtype, positions, reduce)

            def target(head: Any) -> Optional[np.ndarray]:
                dest = targets.get(head.hook)
                if dest is None or head.gradient or tuple(int(s) for s in head.shape[1:]) != dest.shape[1:] or int(head.shape[0]) != r1 - r0:
                    return None
                return dest[r0:r1].reshape(-1).view(np.uint8)  # a contiguous slab: rows r0..r1

            assembler = _wire.Chunks(target)
            result: Any = None
            for received in self._stream(self._run_raw, request):
                chunk, _ = _wire.split_message(received, 1)
                if chunk is not None:
                    done = assembler.add(chunk)
                    if done is None:
                        continue
                    head, raw = done
                    dest = targets.get(head.hook)
                    if dest is None:
                        cache[head.hook] = _wire.as_array(head, raw)
                    elif not np.may_share_memory(raw, dest):
                        part = raw.view(storage).reshape(tuple(int(s) for s in head.shape))
                        _place(dest, part, r0, self.hooks[head.hook].dims, offset, all_positions)
                    continue
                message = pb.RunResponse.FromString(received)
                if message.HasField("result"):
                    result = message.result
            assembler.check_complete()
            if result is None:
                raise _protocol_error("the Run stream ended without its result")
            return result, index_map

        # Requests of a split call go out `concurrency` at a time (each writes its own rows), so the
        # server computes the next while this client receives the last; results are merged in order.
        plan = [(gi, b) for gi in range(len(groups)) for b in batches]
        if len(plan) == 1 or self.concurrency <= 1:
            outcomes = [fetch(gi, b) for gi, b in plan]
        else:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="interpmesh-run") as pool:
                futures = [pool.submit(fetch, gi, b) for gi, b in plan]
                try:
                    outcomes = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        for (gi, batch), (result, index_map) in zip(plan, outcomes):
            r0, r1 = batch.rows
            offset = length - batch.length if padding_side == "left" else 0
            first = gi == 0
            sizes.append(int(result.forward_batch_size))
            if not first:
                continue
            if result.HasField("tokens"):
                t = _wire.tensor_to_numpy(result.tokens)
                tokens[r0:r1, offset:offset + t.shape[1]] = t
            if result.HasField("attention_mask"):
                m = _wire.tensor_to_numpy(result.attention_mask)
                mask[r0:r1, offset:offset + m.shape[1]] = m
                if result.HasField("loss"):
                    count = int(np.clip(m.sum(axis=1) - 1, 0, None).sum())
                    loss_sum += float(result.loss.value) * count
                    loss_count += count
            elif result.HasField("loss"):
                loss_sum += float(result.loss.value)
                loss_count += 1
            if result.HasField("logits"):
                lg = _wire.tensor_to_numpy(result.logits)
                if len(batches) == 1:
                    out_logits = lg
                else:
                    if out_logits is None:
                        out_logits = np.zeros((n, length if logits == "all" else 1, lg.shape[2]), dtype=lg.dtype)
                    _place(out_logits, lg, r0, ("batch", "pos" if logits == "all" else "1", "d_vocab"), offset, True)
            if result.HasField("top_k"):
                ti, tv = _wire.tensor_to_numpy(result.top_k.ids), _wire.tensor_to_numpy(result.top_k.values)
                if len(batches) == 1:
                    top_ids, top_values = ti, tv
                else:
                    if top_ids is None or top_values is None:
                        p = length if logits == "all" else 1
                        top_ids = np.zeros((n, p, ti.shape[2]), dtype=ti.dtype)
                        top_values = np.zeros((n, p, tv.shape[2]), dtype=tv.dtype)
                    dims = ("batch", "pos" if logits == "all" else "1", "k")
                    _place(top_ids, ti, r0, dims, offset, True)
                    _place(top_values, tv, r0, dims, offset, True)
            for r in result.receipts:
                k = index_map[int(r.index)] if int(r.index) < len(index_map) else int(r.index)
                _merge_receipt(receipts, k, Receipt.from_proto(r))

        for h, dest in targets.items():
            cache[h] = _wire.to_user_dtype(dest, wire)
        cache.tokens, cache.attention_mask = tokens, mask
        for k, iv in enumerate(interventions or ()):
            receipts.setdefault(k, Receipt(k, iv.hook, [], 0, 0.0))
        return RunOutput(out_logits, (loss_sum / loss_count) if loss_count else None,
                         [receipts[k] for k in sorted(receipts)], cache, tokens, mask, top_ids, top_values, sizes)

    def _slice(self, iv: Intervention, n: int, r0: int, r1: int, length: int, batch_length: int, offset: int) -> Optional[Intervention]:
        """The part of an intervention that concerns rows r0..r1 of a split request, in that request's frame; None when none does."""
        rows: Sequence[int] = ()
        if iv.rows:
            rows = [r - r0 for r in iv.rows if r0 <= r < r1]
            if not rows:
                return None
        positions: List[int] = []
        if iv.positions:
            # Positions index the padded sequence of the whole input list; this request is padded to its own
            # (possibly shorter) length. Shift them into its frame; a position that is padding for every row
            # here is dropped; one past the whole sequence is passed on for the server to refuse.
            for p in iv.positions:
                q = p + length if -length <= p < 0 else p
                if q < 0 or q >= length:
                    positions.append(p)
                elif offset:  # left padding: this request's positions start at `offset`
                    if q >= offset:
                        positions.append(q - offset)
                elif q < batch_length:  # right padding: positions past this request's length are padding
                    positions.append(q)
            if not positions:
                return None
        value = iv.value
        if _per_row_value(iv, n):
            dims = self.hooks[iv.hook].dims
            v = np.asarray(value)[r0:r1]
            if offset or batch_length != length:
                index: List[Any] = [slice(None)]
                for d, size in zip(dims[1:], v.shape[1:]):
                    index.append(slice(offset, offset + batch_length) if d in ("pos", "query_pos", "key_pos") and size == length else slice(None))
                v = v[tuple(index)]
            value = v
        return iv.with_(rows=tuple(rows), positions=tuple(positions), value=value)


def _merge_receipt(receipts: Dict[int, Receipt], k: int, got: Receipt) -> None:
    """Adds one request's receipt of intervention k to the call's: elements summed, L2 norms as the root of summed squares."""
    if k in receipts:
        prev = receipts[k]
        prev.matched_hooks = list(dict.fromkeys(prev.matched_hooks + got.matched_hooks))
        prev.elements_changed += got.elements_changed
        prev.l2_norm = float(np.hypot(prev.l2_norm, got.l2_norm))
    else:
        got.index = k
        receipts[k] = got


def _per_row_value(iv: Intervention, n: int) -> bool:
    """True when the value carries one slice per row of the batch (full-activation patching)."""
    return iv.value is not None and n > 1 and np.ndim(iv.value) >= 3 and np.shape(iv.value)[0] == n


def _place(dest: np.ndarray, part: np.ndarray, r0: int, dims: Sequence[str], offset: int, all_positions: bool) -> None:
    """Copies a request's part ([rows, ...]) into the whole result at row r0, shifting padded position dimensions."""
    index: List[Any] = [slice(r0, r0 + part.shape[0])]
    for axis, d in enumerate(dims[1:], start=1):
        size = part.shape[axis]
        if size != dest.shape[axis] and (d == "key_pos" or (d in _POS_DIMS and all_positions)):
            index.append(slice(offset, offset + size))
        else:
            index.append(slice(0, size))
    dest[tuple(index)] = part


def _protocol_error(message: str) -> Exception:
    return ProtocolError(message)


def _translated(call: Any) -> Iterator[Any]:
    try:
        for m in call:
            yield m
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


_END = object()


def _background(call: Any) -> Iterator[Any]:
    """Reads a server stream on a daemon thread into an unbounded queue, so a slow consumer never stalls the server."""
    q: "queue.Queue[Any]" = queue.Queue()

    def pump() -> None:
        try:
            for m in call:
                q.put(m)
            q.put(_END)
        except grpc.RpcError as e:
            q.put(e)
        except BaseException as e:  # pragma: no cover - defensive
            q.put(e)

    thread = threading.Thread(target=pump, name="interpmesh-stream", daemon=True)
    thread.start()
    while True:
        item = q.get()
        if item is _END:
            return
        if isinstance(item, grpc.RpcError):
            raise from_rpc_error(item)
        if isinstance(item, BaseException):
            raise item
        yield item

