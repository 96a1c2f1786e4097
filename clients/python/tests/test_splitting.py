"""Requests over the server's limits (a mesh with max_batch 3 and a 20 000-byte capture budget) are
split into several requests and put back together equal to one request on the default mesh."""
from __future__ import annotations

import numpy as np
import pytest

import interpmesh
from conftest import TIGHT

TEXTS = ["the dog is happy . what a", "the cats are so sad . what a", "the cake is warm .", "the balls are very cold . what a",
         "the pie is kind", "the horse is bad . what a lovely walk .", "the team is good"]


def _real(a: np.ndarray, dims: tuple, n: int) -> np.ndarray:
    """Row activations restricted to the row's n real tokens (left padding: the last n positions)."""
    index = tuple(slice(a.shape[axis] - n, None) if d in ("pos", "query_pos", "key_pos") and a.shape[axis] > 1 else slice(None)
                  for axis, d in enumerate(dims))
    return a[index]


def test_every_hook_split_over_batches_and_capture_budget(model: interpmesh.Model, tight_model: interpmesh.Model) -> None:
    limits = tight_model.limits
    assert limits.max_batch == TIGHT["MaxBatch"] and limits.max_capture_bytes == TIGHT["MaxCaptureBytes"]
    # One request of all 7 inputs with every hook would need far more than the budget, and more rows than max_batch.
    with pytest.raises(interpmesh.ResourceExhausted, match="budget|batch"):
        tight_model._execute(tight_model._token_lists(TEXTS), list(tight_model.hooks), None, "all", 0, False, "left",
                             "float32", "all", None, split=False)
    out = tight_model.run(TEXTS, capture=list(tight_model.hooks), logits="all", loss=True)
    assert len(out.forward_batch_sizes) > 3, "expected several requests (rows in threes, hooks in groups)"
    reference = model.run(TEXTS, capture=list(model.hooks), logits="all", loss=True)
    assert reference.forward_batch_sizes == [7]
    assert out.cache.keys() == reference.cache.keys()
    mask = reference.attention_mask
    assert mask is not None and out.attention_mask is not None
    np.testing.assert_array_equal(out.attention_mask, mask)
    np.testing.assert_array_equal(out.tokens, reference.tokens)  # type: ignore[arg-type]
    for hook, expected in reference.cache.items():
        got = out.cache[hook]
        assert got.shape == expected.shape, hook
        dims = model.hooks[hook].dims
        for row in range(len(TEXTS)):
            n = int(mask[row].sum())
            np.testing.assert_allclose(_real(got[row:row + 1], dims, n), _real(expected[row:row + 1], dims, n), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{hook} row {row}")
    assert out.logits is not None and reference.logits is not None
    for row in range(len(TEXTS)):
        n = int(mask[row].sum())
        np.testing.assert_allclose(out.logits[row, -n:], reference.logits[row, -n:], rtol=1e-4, atol=1e-4)
    # The loss of split requests, weighted by their predicted tokens, is the loss of the whole batch.
    assert out.loss == pytest.approx(reference.loss, rel=1e-5)


def test_split_interventions_rows_positions_and_receipts(model: interpmesh.Model, tight_model: interpmesh.Model) -> None:
    hook = "blocks.0.hook_resid_post"
    vec = np.linspace(-1, 1, 64, dtype=np.float32)
    length = max(len(t) for t in tight_model._token_lists(TEXTS))
    interventions = [interpmesh.add(hook, vec, positions=[length - 1], rows=[0, 4, 6]),
                     interpmesh.add(hook, vec, positions=[length - 2]),
                     interpmesh.scale("blocks.1.hook_mlp_out", 0.5)]
    got = tight_model.run(TEXTS, interventions=interventions, capture=hook, logits="last")
    want = model.run(TEXTS, interventions=interventions, capture=hook, logits="last")
    assert len(got.forward_batch_sizes) == 3 and want.forward_batch_sizes == [7]
    assert got.logits is not None and want.logits is not None
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    for g, w in zip(got.receipts[:2], want.receipts[:2]):
        assert (g.index, g.hook, g.matched_hooks, g.elements_changed) == (w.index, w.hook, w.matched_hooks, w.elements_changed)
        assert g.l2_norm == pytest.approx(w.l2_norm, rel=1e-4)
    assert got.receipts[0].elements_changed == 3 * 64
    # An intervention on every position also changes padding, and each request is padded to its own length.
    lengths = [len(t) for t in tight_model._token_lists(TEXTS)]
    padded = sum(len(lengths[r:r + 3]) * max(lengths[r:r + 3]) for r in range(0, 7, 3))
    assert got.receipts[2].matched_hooks == want.receipts[2].matched_hooks == ["blocks.1.hook_mlp_out"]
    assert got.receipts[2].elements_changed == padded * 64 and want.receipts[2].elements_changed == 7 * length * 64


def test_split_full_activation_patch(model: interpmesh.Model, tight_model: interpmesh.Model) -> None:
    """A [batch, pos, d_model] patch value is sliced per request along rows (and positions, for shorter requests)."""
    hook = "blocks.0.hook_resid_post"
    _, clean = model.run_with_cache(TEXTS, names_filter=hook, logits="none")
    value = clean[hook] * np.float32(0.5)
    got = tight_model.run(TEXTS, interventions=[interpmesh.patch(hook, value)], capture="blocks.1.hook_resid_post", logits="none")
    want = model.run(TEXTS, interventions=[interpmesh.patch(hook, value)], capture="blocks.1.hook_resid_post", logits="none")
    mask = want.attention_mask
    assert mask is not None
    for row in range(len(TEXTS)):
        n = int(mask[row].sum())
        np.testing.assert_allclose(got.cache["blocks.1.hook_resid_post"][row, -n:], want.cache["blocks.1.hook_resid_post"][row, -n:],
                                   rtol=1e-4, atol=1e-4)


def test_one_hook_over_the_budget_for_one_row_is_resource_exhausted(tight_model: interpmesh.Model) -> None:
    long_text = " ".join(["the dog is happy ."] * 9)
    with pytest.raises(interpmesh.ResourceExhausted, match="budget of 20,000"):
        tight_model.run_with_cache(long_text, names_filter="blocks.0.attn.hook_pattern")


def test_server_limit_errors_are_resource_exhausted(tight_model: interpmesh.Model) -> None:
    # Generation is not split: four prompts over max_batch 3 get the server's refusal.
    with pytest.raises(interpmesh.ResourceExhausted) as e:
        list(tight_model.generate(["the dog is"] * 4, max_new_tokens=2))
    assert "3" in str(e.value)


def test_split_requests_one_at_a_time_give_the_same(tight_model: interpmesh.Model) -> None:
    concurrent = tight_model.run(TEXTS, capture="blocks.*.hook_resid_post", logits="last", loss=True)
    tight_model.concurrency = 1
    try:
        sequential = tight_model.run(TEXTS, capture="blocks.*.hook_resid_post", logits="last", loss=True)
    finally:
        tight_model.concurrency = 2
    assert len(sequential.forward_batch_sizes) == len(concurrent.forward_batch_sizes) >= 3
    assert sequential.logits is not None and concurrent.logits is not None
    np.testing.assert_allclose(sequential.logits, concurrent.logits, rtol=1e-5, atol=1e-5)
    for hook in sequential.cache:
        np.testing.assert_allclose(sequential.cache[hook], concurrent.cache[hook], rtol=1e-5, atol=1e-5)
    assert sequential.loss == pytest.approx(concurrent.loss, rel=1e-6)


def test_gradients_split_over_max_batch(model: interpmesh.Model, tight_model: interpmesh.Model) -> None:
    """7 rows on a server taking 3: per-row tokens and sets go with their rows; metric, row metrics,
    gradients and captures equal one request's on the default mesh."""
    ids = model.to_tokens(TEXTS)
    lovely, awful = model.to_tokens("lovely")[1], model.to_tokens("awful")[1]
    per_row = [[lovely] if i % 2 == 0 else [awful] for i in range(7)]
    other = [[awful] if i % 2 == 0 else [lovely] for i in range(7)]
    hooks = ["blocks.*.hook_resid_pre", "blocks.1.attn.hook_z"]
    kwargs = dict(logit_diff=(per_row, other), capture="blocks.0.hook_resid_post",
                  interventions=[interpmesh.scale("blocks.0.hook_mlp_out", 0.5, rows=[1, 5])])
    got = tight_model.gradients(ids, hooks, **kwargs)  # type: ignore[arg-type]
    want = model.gradients(ids, hooks, **kwargs)  # type: ignore[arg-type]
    assert len(got.row_metrics) == 7
    np.testing.assert_allclose(got.row_metrics, want.row_metrics, rtol=1e-4, atol=1e-4)
    assert got.metric == pytest.approx(want.metric, rel=1e-4, abs=1e-4)
    mask = want.cache.attention_mask
    assert mask is not None and got.cache.attention_mask is not None
    np.testing.assert_array_equal(got.cache.attention_mask, mask)
    assert got.gradients.keys() == want.gradients.keys() == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"}
    for source_got, source_want in ((got.gradients, want.gradients), (got.cache, want.cache)):
        for hook, expected in source_want.items():
            assert source_got[hook].shape == expected.shape
            for row in range(7):
                n = int(mask[row].sum())
                np.testing.assert_allclose(source_got[hook][row, -n:], expected[row, -n:], rtol=1e-4, atol=1e-5, err_msg=f"{hook} row {row}")
    # The row-restricted intervention reached both of its rows' requests (elements also count each request's padding).
    assert len(got.receipts) == 1 and got.receipts[0].matched_hooks == want.receipts[0].matched_hooks == ["blocks.0.hook_mlp_out"]
    assert got.receipts[0].elements_changed > 0 and want.receipts[0].elements_changed > 0
    # The same gradient request unsplit is the server's RESOURCE_EXHAUSTED (7 rows over max_batch 3).
    request = tight_model._request(ids, [], None, "none", 0, False, "left", "float32", "all", None)
    request.gradient.loss = True
    request.gradient.hooks.append("blocks.0.hook_resid_pre")
    with pytest.raises(interpmesh.ResourceExhausted):
        tight_model._gradient_call(request)
