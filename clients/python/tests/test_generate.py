"""Streaming generation: tokens, texts, per-step captures and receipts; a slow reader still gets
everything (the client drains the stream on its own thread while the loop body takes its time)."""
from __future__ import annotations

import time

import numpy as np
import pytest

import interpmesh

PROMPTS = ["the dog is", "the cakes are so"]


def test_generate_streams_tokens_texts_and_captures(model: interpmesh.Model) -> None:
    steps = list(model.generate(PROMPTS, max_new_tokens=6, capture="blocks.1.hook_resid_post", no_stop=True))
    assert [s.step for s in steps] == list(range(6)) and steps[-1].final and not any(s.final for s in steps[:-1])
    assert steps[0].prompt_tokens == model.to_tokens(PROMPTS)
    prompt_len = max(len(p) for p in steps[0].prompt_tokens)
    assert steps[0].captures["blocks.1.hook_resid_post"].shape == (2, prompt_len, 64)
    assert all(s.captures["blocks.1.hook_resid_post"].shape == (2, 1, 64) for s in steps[1:])
    # Greedy generation is the argmax of a forward over the prompt plus what was generated so far.
    ids = [list(p) for p in steps[0].prompt_tokens]
    for s in steps:
        assert s.texts == [model.to_string([t]) for t in s.tokens]
        out = model.run(ids, logits="last")
        assert out.logits is not None
        assert s.tokens == [int(x) for x in out.logits[:, 0].argmax(axis=-1)]
        for row, t in enumerate(s.tokens):
            ids[row].append(t)
    # The step-0 capture is the forward's activation over the left-padded prompts.
    _, cache = model.run_with_cache(PROMPTS, names_filter="blocks.1.hook_resid_post", logits="none")
    np.testing.assert_allclose(steps[0].captures["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"], rtol=1e-4, atol=1e-4)


def test_generate_with_steering_reports_receipts(model: interpmesh.Model) -> None:
    vec = np.zeros(64, dtype=np.float32)
    vec[0] = 3.0
    steps = list(model.generate("the dog is", max_new_tokens=3, no_stop=True,
                                interventions=[interpmesh.add("blocks.0.hook_resid_post", vec)]))
    receipts = steps[-1].receipts
    assert len(receipts) == 1 and receipts[0].matched_hooks == ["blocks.0.hook_resid_post"]
    # Prompt (4 tokens) then one token per later step, every position changed in element 0.
    assert receipts[0].elements_changed == 4 + 2
    # The norm is summed over steps: sqrt(4) * 3 for the prompt, then 3 per step.
    assert receipts[0].l2_norm == pytest.approx(2 * 3.0 + 3.0 + 3.0, rel=1e-4)


def test_slow_reader_gets_everything(stall_model: interpmesh.Model) -> None:
    """On a mesh whose server ends a call unread for 1 s (and pauses past 1 KiB of output), a loop that
    sleeps 2.5 s between steps still receives every step and capture, equal to a fast read."""
    kwargs = dict(max_new_tokens=12, capture="blocks.*", no_stop=True)
    fast = list(stall_model.generate(PROMPTS, **kwargs))  # type: ignore[arg-type]
    slow = []
    for i, step in enumerate(stall_model.generate(PROMPTS, **kwargs)):  # type: ignore[arg-type]
        slow.append(step)
        if i in (0, 5):
            time.sleep(2.5)
    assert [s.tokens for s in slow] == [s.tokens for s in fast] and len(slow) == 12 and slow[-1].final
    for a, b in zip(slow, fast):
        assert a.captures.keys() == b.captures.keys() and len(a.captures) == 46
        for hook in a.captures:
            np.testing.assert_allclose(a.captures[hook], b.captures[hook], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("buffer", [True, False])
def test_stalled_reader_at_the_model_service(stall_model_direct: interpmesh.Model, buffer: bool) -> None:
    """At the model service itself (no gateway buffering in between), a loop that pauses 4 s gets every
    step with the background reader; reading only as the loop asks (buffer=False) — the control, showing
    the pause is long enough to matter — the server ends the call with RESOURCE_EXHAUSTED naming the stall."""
    kwargs = dict(max_new_tokens=40, capture="blocks.*", no_stop=True, buffer=buffer)
    if buffer:
        steps = []
        for i, step in enumerate(stall_model_direct.generate(PROMPTS, **kwargs)):  # type: ignore[arg-type]
            steps.append(step)
            if i == 0:
                time.sleep(4)
        assert len(steps) == 40 and steps[-1].final and all(len(s.captures) == 46 for s in steps)
        return
    with pytest.raises(interpmesh.ResourceExhausted) as e:
        for i, _ in enumerate(stall_model_direct.generate(PROMPTS, **kwargs)):  # type: ignore[arg-type]
            if i == 0:
                time.sleep(4)
    assert "read" in str(e.value).lower() or "stall" in str(e.value).lower()


def test_leaving_the_loop_early_cancels(model: interpmesh.Model) -> None:
    for step in model.generate("the dog is", max_new_tokens=30, no_stop=True):
        assert step.step == 0
        break
    # The mesh is still serving this client normally afterwards.
    assert model.to_tokens("the dog") == [1, 2, 8]
