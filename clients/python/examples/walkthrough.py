# %% [markdown]
# # InterpMesh from Python: a walk-through on the toy models
#
# Cells are marked `# %%` (VS Code, PyCharm and Jupytext open this file as a notebook). It needs two
# local meshes, one per toy model (`interpmesh up` serves one model):
#
# ```
# interpmesh up                                                                  # concepts, gateway on :50050
# interpmesh up --model models/induction --grpc-port 50060 --model-port 50061 --data induction-data
# ```
#
# and reads their addresses from `INTERPMESH_URL` / `INTERPMESH_INDUCTION_URL` (and the key, if the
# meshes have one, from `INTERPMESH_API_KEY`). CI runs it from top to bottom
# (`clients/python/tests/test_docs.py`); the `assert`s are what it checks.

# %%
import os
import tempfile

import numpy as np

import interpmesh

key = os.environ.get("INTERPMESH_API_KEY")
mesh = interpmesh.connect(os.environ.get("INTERPMESH_URL", "http://127.0.0.1:50050"), key=key)
concepts = mesh.model("concepts")
induction_mesh = interpmesh.connect(os.environ.get("INTERPMESH_INDUCTION_URL", "http://127.0.0.1:50060"), key=key)
induction = induction_mesh.model("induction")

# %% [markdown]
# ## The model and its hooks
# `model.hooks` lists every hook point in forward order with its shape template; `model.limits` the
# server's limits, which the client splits large requests over.

# %%
print(concepts.cfg)
for name, hook in list(concepts.hooks.items())[:6]:
    print(f"{name:36} {hook.shape}")
print("max_batch", concepts.limits.max_batch, "capture budget", concepts.limits.max_capture_bytes)
print(concepts.to_tokens("the dog is happy . what a"), concepts.to_str_tokens("the dog is happy"))

# %% [markdown]
# ## A cache of activations
# `run_with_cache` pads inputs of different lengths (left by default) and returns numpy arrays.

# %%
texts = ["the dog is happy . what a", "the cats are so sad . what a", "the cake is warm ."]
logits, cache = concepts.run_with_cache(texts, names_filter=["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"])
print(logits.shape, cache["blocks.1.hook_resid_post"].shape, cache["blocks.0.attn.hook_pattern"].shape)
print(cache.attention_mask)
predicted = [concepts.to_string(logits[i, -1].argmax()) for i in range(len(texts))]
print("next words:", predicted)
assert predicted[0] in ("lovely", "great", "nice") and predicted[1] in ("awful", "grim", "poor")

# %% [markdown]
# ## Induction heads, read off attention patterns
# On a random sequence repeated once, an induction head attends from each token of the second copy
# to the token after its first occurrence: the diagonal `period - 1` positions back.

# %%
rng = np.random.default_rng(0)
segment = [f"t{i:02d}" for i in rng.choice(60, size=12, replace=False)]
text = " ".join(segment + segment)
_, icache = induction.run_with_cache(text, names_filter="blocks.*.attn.hook_pattern", logits="none")
pattern = icache["blocks.1.attn.hook_pattern"][0]            # [head, query_pos, key_pos]; position 0 is <bos>
queries = np.arange(13, 25)                                    # the second copy
scores = pattern[:, queries, queries - 11].mean(axis=1)        # attention to "the token after my earlier copy"
print("induction score per layer-1 head:", np.round(scores, 2))
assert scores.max() > 0.5

# %% [markdown]
# ## Ablating the induction heads
# Zero-ablating `attn.hook_z` of all layer-1 heads destroys the copy: the loss on the repeated
# sequence goes up.

# %%
clean = induction.run(text, loss=True, logits="none")
ablated = induction.run(text, loss=True, logits="none", interventions=[interpmesh.ablate("blocks.1.attn.hook_z")])
print(f"loss clean {clean.loss:.3f}, induction heads ablated {ablated.loss:.3f}; receipt: {ablated.receipts[0]}")
assert ablated.loss > clean.loss + 0.5

# %% [markdown]
# ## Steering during generation
# The difference of the residual stream between a happy and a sad sentence, added at every step,
# turns a sad sentence's continuation positive. Steps stream in as they are generated.

# %%
_, pair = concepts.run_with_cache(["the dog is happy . what a", "the dog is sad . what a"], names_filter="blocks.1.hook_resid_post")
happy = pair["blocks.1.hook_resid_post"][0, -1] - pair["blocks.1.hook_resid_post"][1, -1]
prompt = "the cat is cold . what a"
plain = "".join(" " + s.texts[0] for s in concepts.generate(prompt, max_new_tokens=3, no_stop=True))
steered = "".join(" " + s.texts[0] for s in concepts.generate(
    prompt, max_new_tokens=3, no_stop=True, interventions=[interpmesh.add("blocks.1.hook_resid_post", 2 * happy)]))
print(prompt, "|", plain, "| steered:", steered)
assert steered.split()[0] in ("lovely", "great", "nice")

# %% [markdown]
# ## Activation patching
# Patch the happy sentence's residual stream at the adjective (position 4) into the sad sentence's
# forward, before and after layer 0: patched into the block's input, the prediction follows the
# patched-in sentiment; after layer 0 it no longer does — layer 0's attention has already moved the
# sentiment on to the later positions.

# %%
_, both = concepts.run_with_cache(["the dog is happy . what a", "the dog is sad . what a"], names_filter="blocks.0.hook_resid_*")
for hook in ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]:
    patched = concepts.run("the dog is sad . what a", interventions=[interpmesh.patch(hook, both[hook][0, 4], positions=[4])])
    print(f"patched {hook} at the adjective:", concepts.to_string(patched.logits[0, -1].argmax()))
    if hook == "blocks.0.hook_resid_pre":
        assert concepts.to_string(patched.logits[0, -1].argmax()) in ("lovely", "great", "nice")

# %% [markdown]
# ## Gradients and weights
# The gradient of the logit difference (lovely − awful) with respect to each layer's residual stream
# at the last position, and the attention output weights.

# %%
lovely, awful = concepts.to_tokens("lovely")[1], concepts.to_tokens("awful")[1]
g = concepts.gradients("the dog is happy . what a", "blocks.*.hook_resid_post", logit_diff=([lovely], [awful]), positions="last")
print("metric", round(g.metric, 3), {h: round(float(np.linalg.norm(v)), 3) for h, v in g.gradients.items()})
w_o = concepts.weights("blocks.*.attn.W_O")
print({name: w.shape for name, w in w_o.items()})

# %% [markdown]
# ## A probing job and its artifact
# Jobs run in the mesh's analysis worker; progress shows on stderr. Tables are lists of dicts;
# the probes are saved as artifacts (safetensors, decoded to numpy).

# %%
rows = [{"text": f"the {n} is {a} . what a", "label": "positive" if a in "happy good warm kind" else "negative"}
        for n in ["dog", "cat", "cake", "ball", "team"] for a in ["happy", "sad", "good", "bad", "warm", "cold", "kind", "cruel"]]
job = mesh.run("probing", {"rows": rows, "hooks": ["blocks.*.hook_resid_post"], "save_prefix": "probes/walkthrough"})
for row in job.result.tables["per_hook"]:
    print(row["hook"], row["accuracy"])
with tempfile.TemporaryDirectory(prefix="interpmesh-") as folder:
    for figure in job.result.figures.values():
        print("saved", figure.save(folder).name)
probe = mesh.artifacts.get(job.result.artifacts[-1])
weights = probe["tensors.safetensors"]
print(probe.name, {k: v.shape for k, v in weights.items()}, probe.metadata.get("accuracy"))

# %% [markdown]
# ## Our own artifact
# Save the steering direction, list it, read it back.

# %%
mesh.artifacts.put("steering/walkthrough-happy", {"direction.safetensors": {"direction": happy}}, metadata={"hook": "blocks.1.hook_resid_post"})
print([a.name for a in mesh.artifacts.list("steering/")])
back = mesh.artifacts.get("steering/walkthrough-happy")["direction.safetensors"]["direction"]
assert np.array_equal(back, happy)
