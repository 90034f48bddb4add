"""The TransformerLens-style API against Hugging Face transformers, in one process with one torch."""
import pytest
import torch

import emotion_circuits as ec
from conftest import PROMPTS
from hf_hooks import record


def test_cache_matches_hugging_face_at_every_hook_point(model, hf):
    """Every hook point Hugging Face's modules expose, for each prompt alone, within the Rust parity
    tests' relative tolerance (3e-4 of the point's largest magnitude)."""
    rows = [model.to_tokens(p)[0].tolist() for p in PROMPTS]
    with torch.no_grad():
        reference = record(hf, rows)
    compared = set()
    for k, ids in enumerate(rows):
        logits, cache = model.run_with_cache(torch.tensor(ids))
        for key, hf_value in reference.items():
            if not key.startswith(f"{k}/"):
                continue
            name = key.split("/", 1)[1]
            if name not in cache:
                continue
            ours = cache[name]
            assert ours.shape == hf_value.shape, f"{name}: {tuple(ours.shape)} vs {tuple(hf_value.shape)}"
            finite = torch.isfinite(hf_value)
            scale = hf_value[finite].abs().max().clamp_min(1e-6)
            rel = ((ours - hf_value)[finite].abs().max() / scale).item()
            assert rel < 3e-4, f"prompt {k} {name}: max |ours - HF| is {rel:.2e} of {scale:.3e}"
            compared.add(name.split(".")[-1])
        with torch.no_grad():
            hf_logits = hf(torch.tensor([ids])).logits
        assert (logits - hf_logits).abs().max().item() < 1e-3
    # The residual stream, attention internals and the MLP were all compared.
    for kind in ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_z", "hook_pattern", "hook_post", "hook_rot_q", "hook_embed"]:
        assert kind in compared, f"{kind} was never compared"


def test_cache_keys_and_layer_indexing(model):
    _, cache = model.run_with_cache(PROMPTS[0], names_filter=lambda n: n.endswith("hook_resid_post"))
    n = model.cfg["n_layers"]
    assert len(cache) == n and cache.keys()[0] == "blocks.0.hook_resid_post"
    assert torch.equal(cache["resid_post", 10], cache["blocks.10.hook_resid_post"])
    assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n - 1}.hook_resid_post"])
    assert "blocks.3.hook_resid_mid" not in cache
    with pytest.raises(KeyError, match="blocks.3.hook_resid_mid"):
        cache["blocks.3.hook_resid_mid"]
    assert list(iter(cache)) == cache.keys()


def test_python_hook_ablation_matches_hugging_face(model, hf):
    """Zeroing MLP neurons in a Python hook equals the same ablation done with a PyTorch hook on Hugging
    Face's down_proj input."""
    layer, neurons = 5, [3, 123, 700]

    def ablate(act, hook):
        assert hook.name == f"blocks.{layer}.mlp.hook_post" and hook.layer == layer
        act[:, :, neurons] = 0.0

    ids = model.to_tokens(PROMPTS[1])
    ours = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", ablate)])

    def hf_ablate(_module, args):
        x = args[0].clone()
        x[:, :, neurons] = 0.0
        return (x,)

    handle = hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hf_ablate)
    try:
        with torch.no_grad():
            theirs = hf(ids).logits
    finally:
        handle.remove()
    clean = model(ids)
    assert (ours - clean).abs().max().item() > 1e-3, "the ablation changed nothing"
    assert (ours - theirs).abs().max().item() < 1e-3


def test_hooks_run_in_order_and_replacements_apply(model):
    ids = model.to_tokens(PROMPTS[0])
    seen = []

    def first(act, hook):
        seen.append("first")
        return act * 0.5

    def second(act, hook):
        seen.append("second")
        return act * 2.0

    name = "blocks.4.hook_resid_post"
    out = model.run_with_hooks(ids, fwd_hooks=[(name, first), (name, second)])
    assert seen == ["first", "second"]
    assert torch.allclose(out, model(ids), atol=1e-4)
    halved = model.run_with_hooks(ids, fwd_hooks=[(name, first)])
    assert (halved - out).abs().max().item() > 1e-2


def test_name_filters_and_native_hooks(model):
    ids = model.to_tokens(PROMPTS[0])
    names = []
    model.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith("hook_mlp_out"), lambda a, h: names.append(h.name))])
    assert names == [f"blocks.{i}.hook_mlp_out" for i in range(model.cfg["n_layers"])]
    # A native zero equals the same zero written in Python.
    py = model.run_with_hooks(ids, fwd_hooks=[("blocks.7.attn.hook_z", lambda a, h: a.__setitem__((slice(None), slice(None), 2), 0.0))])
    native = model.run_with_hooks(ids, fwd_hooks=[ec.zero("blocks.7.attn.hook_z", [2])])
    assert torch.equal(py, native)


def test_tensors_are_shared_not_copied(model):
    ids = model.to_tokens(PROMPTS[0])
    # A vector added by a native hook is PyTorch's own tensor: editing it in place changes what Rust adds.
    v = torch.zeros(model.cfg["d_model"])
    hook = ec.add("blocks.6.hook_resid_post", v)
    before = model.run_with_hooks(ids, fwd_hooks=[hook])
    assert torch.equal(before, model(ids))
    v[0] = 10.0
    after = model.run_with_hooks(ids, fwd_hooks=[hook])
    assert (after - before).abs().max().item() > 1e-3
    # The activation a Python hook sees is the forward's own memory; what it writes there goes on.
    kept = {}

    def look(act, hook):
        kept["ptr"] = act.data_ptr()
        act.zero_()

    _, cache = model.run_with_cache(ids, names_filter="blocks.2.hook_attn_out", fwd_hooks=[("blocks.2.hook_attn_out", look)])
    assert cache["blocks.2.hook_attn_out"].abs().max().item() == 0.0
    # A cached tensor handed out twice is the same memory.
    assert cache["blocks.2.hook_attn_out"].data_ptr() == cache["blocks.2.hook_attn_out"].data_ptr()


def test_generate_with_hooks(model):
    prompt = [{"role": "user", "content": "Tell me about your weekend."}]
    plain = model.generate(prompt, max_new_tokens=12)
    assert isinstance(plain, str) and plain
    name = "blocks.10.hook_resid_post"
    v = torch.randn(model.cfg["d_model"], generator=torch.Generator().manual_seed(0))
    native = model.generate(prompt, max_new_tokens=12, fwd_hooks=[ec.add(name, v * 4.0)], return_tokens=True)

    def push(act, hook):
        act += v * 4.0

    python = model.generate(prompt, max_new_tokens=12, fwd_hooks=[(name, push)], return_tokens=True)
    assert python == native
    assert model.generate([prompt, prompt], max_new_tokens=12) == [plain, plain]


def test_tokens_round_trip(model):
    tokens = model.to_tokens(["Hello there", "Hi"])
    assert tokens.dtype == torch.int64 and tokens.shape[0] == 2
    assert model.to_string(tokens[0]) == "Hello there"
    assert "".join(model.to_str_tokens("Hello there")) == "Hello there"
