"""Model calls against a real mesh, each checked against an independent computation: the C# CLI's
in-process forward, a raw call through the generated stubs, the checkpoint's own weights, finite
differences, or algebraic identities between interventions."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

import interpmesh
from interpmesh import safetensors
from interpmesh._proto.interpmesh.v1 import model_service_pb2 as pb
from interpmesh._proto.interpmesh.v1 import model_service_pb2_grpc as rpc
from meshproc import REPO, LocalMesh, cli

TEXT = "the dog is happy . what a"
TEXTS = ["the dog is happy . what a", "the cats are so sad . what a", "the cake is warm ."]


def test_info_hooks_and_tokenizer(model: interpmesh.Model) -> None:
    config = json.loads((REPO / "models" / "concepts" / "config.json").read_text())
    assert model.info.architecture == "GPT2LMHeadModel"
    assert model.cfg["n_layers"] == config["n_layer"] and model.cfg["d_model"] == config["n_embd"]
    assert model.limits.max_batch == 64
    hooks = model.hooks
    assert list(hooks)[0] == "hook_embed"
    assert hooks["blocks.0.hook_resid_post"].dims == ("batch", "pos", "d_model")
    assert hooks["blocks.1.attn.hook_pattern"].layer == 1
    assert hooks["blocks.1.attn.hook_pattern"].shape == "[batch, head, query_pos, key_pos]"
    ids = model.to_tokens(TEXT)
    vocab = json.loads((REPO / "models" / "concepts" / "tokenizer.json").read_text())["model"]["vocab"]
    assert ids == [vocab["<bos>"]] + [vocab[w] for w in TEXT.split()]
    assert model.to_tokens(TEXTS)[0] == ids
    assert model.to_string(ids) == "<bos> " + TEXT
    assert model.to_string([ids, ids[:3]]) == ["<bos> " + TEXT, "<bos> the dog"]
    assert model.to_str_tokens("the dog") == ["<bos>", "the", "dog"]


def test_run_with_cache_matches_the_csharp_cli_forward(model: interpmesh.Model) -> None:
    """Same ids through the C# runtime in process (`interpmesh forward --model`) and through the mesh."""
    ids = model.to_tokens(TEXT)
    assert isinstance(ids, list)
    result = subprocess.run(cli() + ["forward", "--model", str(REPO / "models" / "concepts"), "--ids", ",".join(map(str, ids)),
                                     "--capture", "blocks.*.hook_resid_post,blocks.0.attn.hook_pattern", "--logits", "all", "--loss", "--json"],
                            capture_output=True, text=True, check=True)
    expected = json.loads(result.stdout)
    logits, cache = model.run_with_cache(ids, names_filter=["blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern"])
    assert logits is not None
    assert sorted(cache) == sorted(expected["captures"])
    for hook, c in expected["captures"].items():
        assert list(cache[hook].shape) == c["shape"]
        np.testing.assert_allclose(cache[hook].ravel(), np.asarray(c["values"], dtype=np.float32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits.reshape(-1), np.asarray(expected["logits"], dtype=np.float32).reshape(-1), rtol=1e-5, atol=1e-5)
    out = model.run(ids, loss=True, logits="none")
    assert out.loss == pytest.approx(expected["loss"], rel=1e-6)
    assert out.logits is None


def test_run_with_cache_is_bit_identical_to_a_raw_stub_call(local_mesh: LocalMesh, model: interpmesh.Model) -> None:
    """The package's reassembly and batching add nothing: the same request through the bare generated stubs gives the same bytes."""
    channel = grpc.insecure_channel(local_mesh.url.replace("http://", ""))
    stub = rpc.ModelServiceStub(channel)
    md = (("authorization", f"Bearer {local_mesh.key}"),)
    request = pb.RunRequest(inputs=[pb.Input(text=t) for t in TEXTS], captures=[pb.Capture(hooks=["blocks.*"])],
                            logits=pb.LogitsRequest(mode=pb.LogitsRequest.MODE_ALL))
    raw, shapes, logits = {}, {}, None
    for m in stub.Run(request, metadata=md):
        if m.HasField("activation"):
            raw.setdefault(m.activation.hook, bytearray()).extend(m.activation.data)
            shapes[m.activation.hook] = tuple(m.activation.shape)
        else:
            logits = np.frombuffer(m.result.logits.data, "<f4").reshape(tuple(m.result.logits.shape))
    channel.close()
    got_logits, cache = model.run_with_cache(TEXTS, names_filter=lambda name: name.startswith("blocks."))
    assert sorted(cache) == sorted(raw) and len(raw) == 46
    for hook, data in raw.items():
        assert cache[hook].shape == shapes[hook]
        assert cache[hook].tobytes() == bytes(data), hook
    assert got_logits is not None and logits is not None and got_logits.tobytes() == logits.tobytes()
    assert cache.attention_mask is not None and cache.attention_mask.sum(axis=1).tolist() == [8, 9, 6]


def test_run_with_cache_every_hook_by_default_right_padding_and_dtypes(model: interpmesh.Model) -> None:
    logits, cache = model.run_with_cache(TEXTS, padding_side="right")
    assert set(cache) == set(model.hooks)
    assert logits is not None and logits.shape == (3, 9, 54)
    assert cache.attention_mask is not None and cache.attention_mask[2].tolist() == [1] * 6 + [0] * 3
    _, left = model.run_with_cache(TEXTS, names_filter="blocks.1.hook_resid_post")
    # Right padding puts row 2's six tokens first; left padding last: the same real-token activations.
    np.testing.assert_allclose(cache["blocks.1.hook_resid_post"][2, :6], left["blocks.1.hook_resid_post"][2, 3:], rtol=1e-5, atol=1e-5)
    _, half = model.run_with_cache(TEXTS, names_filter="blocks.1.hook_resid_post", dtype="float16")
    assert half["blocks.1.hook_resid_post"].dtype == np.float16
    np.testing.assert_allclose(half["blocks.1.hook_resid_post"], left["blocks.1.hook_resid_post"], rtol=2e-3, atol=2e-3)
    _, bf = model.run_with_cache(TEXTS, names_filter="blocks.1.hook_resid_post", dtype="bfloat16")
    b = np.asarray(bf["blocks.1.hook_resid_post"], dtype=np.float32)
    # bfloat16 keeps 8 significant bits: within 2^-8 relative of float32.
    np.testing.assert_allclose(b, left["blocks.1.hook_resid_post"], rtol=2 ** -7, atol=1e-6)


def test_positions_last_and_mean(model: interpmesh.Model) -> None:
    _, full = model.run_with_cache(TEXTS, names_filter="blocks.0.hook_resid_post")
    _, last = model.run_with_cache(TEXTS, names_filter="blocks.0.hook_resid_post", positions="last", logits="last")
    np.testing.assert_allclose(last["blocks.0.hook_resid_post"][:, 0], full["blocks.0.hook_resid_post"][:, -1], rtol=1e-5, atol=1e-6)
    _, mean = model.run_with_cache(TEXTS[0], names_filter="blocks.0.hook_resid_post", reduce="mean", logits="none")
    _, one = model.run_with_cache(TEXTS[0], names_filter="blocks.0.hook_resid_post", logits="none")
    np.testing.assert_allclose(mean["blocks.0.hook_resid_post"][0, 0], one["blocks.0.hook_resid_post"][0].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_interventions_add_patch_scale_ablate(model: interpmesh.Model) -> None:
    hook = "blocks.0.hook_resid_post"
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(64).astype(np.float32)
    _, clean = model.run_with_cache(TEXT, names_filter=hook, logits="none")
    steered = model.run(TEXT, interventions=[interpmesh.add(hook, vec, positions=[7])], logits="all", capture=hook)
    acts = steered.cache[hook]
    np.testing.assert_allclose(acts[0, 7], clean[hook][0, 7] + vec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts[0, :7], clean[hook][0, :7], rtol=1e-6, atol=1e-6)
    assert steered.receipts[0].elements_changed == 64
    assert steered.receipts[0].l2_norm == pytest.approx(float(np.linalg.norm(vec)), rel=1e-4)
    # Writing clean + vec (patch) is the same forward as adding vec.
    patched = model.run(TEXT, interventions=[interpmesh.patch(hook, clean[hook][0, 7] + vec, positions=[7])], logits="all")
    assert steered.logits is not None and patched.logits is not None
    np.testing.assert_allclose(patched.logits, steered.logits, rtol=1e-4, atol=1e-4)
    zero = model.run(TEXT, interventions=[interpmesh.ablate("blocks.*.attn.hook_z", heads=[1])], logits="last")
    scaled = model.run(TEXT, interventions=[interpmesh.scale("blocks.*.attn.hook_z", 0.0, heads=[1])], logits="last")
    assert zero.logits is not None and scaled.logits is not None
    np.testing.assert_allclose(zero.logits, scaled.logits, rtol=1e-6, atol=1e-6)
    assert zero.receipts[0].matched_hooks == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    plain = model.run(TEXT, logits="last")
    assert plain.logits is not None and not np.allclose(plain.logits, zero.logits)
    mean = model.run(TEXT, interventions=[interpmesh.ablate(hook, mean=clean[hook][0].mean(axis=0))], capture=hook, logits="none")
    np.testing.assert_allclose(mean.cache[hook][0], np.broadcast_to(clean[hook][0].mean(axis=0), (8, 64)), rtol=1e-5, atol=1e-6)


def test_run_top_k_and_loss(model: interpmesh.Model) -> None:
    out = model.run(TEXTS, logits="last", top_k=3, loss=True)
    full = model.run(TEXTS, logits="last")
    assert out.top_k_ids is not None and out.top_k_values is not None and full.logits is not None
    assert out.top_k_ids.shape == (3, 1, 3)
    np.testing.assert_array_equal(out.top_k_ids[:, 0], np.argsort(-full.logits[:, 0], axis=-1)[:, :3])
    assert out.loss is not None and 0 < out.loss < 5


def test_gradients_match_finite_differences(model: interpmesh.Model) -> None:
    hook = "blocks.0.hook_resid_post"
    ids = model.to_tokens(TEXT)
    happy, sad = ids[4], model.to_tokens("sad")[1]
    g = model.gradients(TEXT, hook, logit_diff=([happy], [sad]), positions="last")
    assert g[hook].shape == (1, 1, 64)
    direction = np.zeros(64, dtype=np.float32)
    direction[:8] = 1.0
    eps = 1e-2

    def metric(sign: float) -> float:
        out = model.run(TEXT, interventions=[interpmesh.add(hook, sign * eps * direction, positions=[7])], logits="last")
        assert out.logits is not None
        return float(out.logits[0, 0, happy] - out.logits[0, 0, sad])

    assert g.metric == pytest.approx(metric(0.0), rel=1e-4, abs=1e-4)
    numeric = (metric(1.0) - metric(-1.0)) / (2 * eps)
    assert float(g[hook][0, 0] @ direction) == pytest.approx(numeric, rel=2e-2, abs=2e-3)
    loss = model.gradients(TEXTS, "blocks.*.hook_resid_pre", loss=True)
    assert set(loss.gradients) == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"} and len(loss.row_metrics) == 3
    assert loss.metric == pytest.approx(sum(loss.row_metrics), rel=1e-5)


def test_weights_match_the_checkpoint(model: interpmesh.Model) -> None:
    """W_O from GetWeights is the checkpoint's attn.c_proj weight read by our own safetensors reader, split per head."""
    tensors = safetensors.load(REPO / "models" / "concepts" / "model.safetensors")
    weights = model.weights("blocks.*.attn.W_O")
    assert list(weights) == ["blocks.0.attn.W_O", "blocks.1.attn.W_O"]
    for layer in range(2):
        key = next(k for k in tensors if k.endswith(f"h.{layer}.attn.c_proj.weight"))
        np.testing.assert_array_equal(weights[f"blocks.{layer}.attn.W_O"], tensors[key].reshape(4, 16, 64))
    emb = model.weights(["embed.W_E"], dtype="float16")["embed.W_E"]
    assert emb.dtype == np.float16 and emb.shape == (54, 64)


def test_run_splits_over_max_batch_on_the_default_mesh(model: interpmesh.Model) -> None:
    """70 inputs (max_batch 64) come back as one result equal to per-input runs."""
    texts = [TEXTS[i % 3] for i in range(70)]
    logits, cache = model.run_with_cache(texts, names_filter="blocks.1.hook_resid_post", logits="last")
    assert logits is not None and logits.shape == (70, 1, 54)
    _, single = model.run_with_cache(TEXTS, names_filter="blocks.1.hook_resid_post")
    for i in (0, 1, 2, 63, 64, 69):
        n = int(cache.attention_mask[i].sum())  # type: ignore[index]
        np.testing.assert_allclose(cache["blocks.1.hook_resid_post"][i, -n:], single["blocks.1.hook_resid_post"][i % 3, -n:], rtol=1e-5, atol=1e-5)


def test_bad_hook_is_invalid_argument_with_the_servers_message(model: interpmesh.Model) -> None:
    with pytest.raises(interpmesh.InvalidArgument) as e:
        model.run_with_cache(TEXT, names_filter="blocks.0.hook_resid_postt")
    assert "unknown hook 'blocks.0.hook_resid_postt'" in str(e.value)
    assert "blocks.0.hook_resid_post" in e.value.message and e.value.code == "INVALID_ARGUMENT"
    assert isinstance(e.value, interpmesh.InterpMeshError) and isinstance(e.value, ValueError)
    with pytest.raises(interpmesh.InvalidArgument, match="unknown hook 'blocks.1.hook_nope'"):
        model.run_with_cache(TEXT, names_filter=["blocks.*.hook_resid_post", "blocks.1.hook_nope"])
    with pytest.raises(interpmesh.InvalidArgument, match="token id 99999"):
        model.run([1, 99999])
    with pytest.raises(interpmesh.InvalidArgument, match="gradient"):
        model.gradients(TEXT, "blocks.0.hook_nothing", loss=True)
    with pytest.raises(interpmesh.InvalidArgument, match="logits must be"):
        model.run(TEXT, logits="first")


def test_wrong_key_unknown_model_and_no_server(local_mesh: LocalMesh) -> None:
    with interpmesh.connect(local_mesh.url, key="not-the-key") as bad:
        with pytest.raises(interpmesh.Unauthenticated):
            bad.model("concepts").info
    with interpmesh.connect(local_mesh.url, key=local_mesh.key) as good:
        with pytest.raises(interpmesh.InterpMeshError) as e:
            good.model("no-such-model").to_tokens("x")
        assert e.value.code in ("NOT_FOUND", "INVALID_ARGUMENT") and "no-such-model" in str(e.value)
    with interpmesh.connect("http://127.0.0.1:9", retry=False, timeout=5) as nowhere:
        with pytest.raises(interpmesh.Unavailable):
            nowhere.plugins()
    with pytest.raises(ValueError, match="http:// or https://"):
        interpmesh.connect("ftp://example.org")


def test_model_settings_option_of_up_refuses_a_bad_item() -> None:
    result = subprocess.run(cli() + ["up", "--model-settings", "MaxBatch"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--model-settings must be NAME=VALUE" in result.stderr and "'MaxBatch'" in result.stderr


def test_safetensors_round_trip_and_bf16(tmp_path: Path) -> None:
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([1, -2], dtype=np.int64),
              "h": np.ones((2, 2), dtype=np.float16)}
    data = safetensors.dumps(arrays, metadata={"k": "v"})
    (length,) = np.frombuffer(data[:8], "<u8")
    assert (8 + int(length)) % 8 == 0
    back = safetensors.loads(data)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    assert safetensors.read_metadata(data) == {"k": "v"}
    # A BF16 tensor written by hand (the upper halves of float32 values) reads back as those values.
    values = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"b": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    header += b" " * (-len(header) % 8)
    raw = len(header).to_bytes(8, "little") + header + bits
    np.testing.assert_array_equal(np.asarray(safetensors.loads(raw)["b"], dtype=np.float32), values)
    with pytest.raises(ValueError, match="safetensors"):
        safetensors.loads(b"\x00" * 4)


def test_model_call_and_cache_shorthand(model: interpmesh.Model) -> None:
    logits, cache = model.run_with_cache(TEXTS, names_filter=["hook_embed", "blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern", "blocks.1.mlp.hook_post"])
    assert logits is not None
    real = cache.attention_mask.astype(bool)  # type: ignore[union-attr]
    called = model(TEXTS)
    assert called.shape == logits.shape  # padding positions' logits are not specified: compare real tokens
    np.testing.assert_allclose(called[real], logits[real], rtol=1e-5, atol=1e-5)
    assert cache["resid_post", 1] is cache["blocks.1.hook_resid_post"]
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"] and cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"] and cache["embed", None] is cache["hook_embed"]  # type: ignore[index]
    with pytest.raises(KeyError, match="resid_mid"):
        cache["resid_mid", 0]
