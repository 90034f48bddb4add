"""Hugging Face reference for every hook point: loads a GGUF file as Hugging Face does (f32, eager attention),
runs each prompt alone, and records the activation at each TransformerLens hook point from the modules' own
hooks (inputs and outputs of embed_tokens, the norms, q/k/v/o_proj, gate/up/down_proj, the decoder layers)
and the attention weights Hugging Face returns. Points that no module outputs are computed from module values
with Hugging Face's own functions: the norm scales (from the norm's input and its epsilon), RoPE'd queries
and keys (the model file's apply_rotary_pos_emb on the position embeddings the attention receives), the
scores (its scaling and causal mask), per-head results (z through each head's columns of o_proj).

Families: Llama, Qwen2/3, Mistral, Phi-3 (fused qkv_proj and gate_up_proj are split as the model splits
them), Gemma 2/3 (the output norms: hook_attn_out and hook_mlp_out are the normed outputs, ln2 is
pre_feedforward_layernorm; soft-capped scores; q/k norms).

usage: hf_hooks.py REQUEST.json OUT.safetensors
REQUEST: {"gguf": path, "prompts": [[ids]...], "threads": T}, or "folder": a Hugging Face checkpoint instead
OUT: tensors "{k}/{hook name}" for prompt k, shaped as TransformerLens lays them out, batch dimension 1.
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main() -> None:
    req_path, out_path = sys.argv[1], sys.argv[2]
    with open(req_path) as f:
        req = json.load(f)
    torch.set_num_threads(int(req.get("threads", 2)))
    if "folder" in req:
        model = AutoModelForCausalLM.from_pretrained(req["folder"], dtype=torch.float32, attn_implementation="eager")
    else:
        folder, name = req["gguf"].rsplit("/", 1)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    save_file(record(model.eval(), req["prompts"]), out_path)


def record(model, prompts) -> dict:
    """Every hook point of `model` (eval, eager attention) on each prompt alone: {"{k}/{name}": tensor}."""
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    rope = sys.modules[type(model.model.layers[0].self_attn).__module__].apply_rotary_pos_emb

    def qk_of(attn, x):
        lin = torch.nn.functional.linear
        if hasattr(attn, "qkv_proj"):
            qkv = lin(x, attn.qkv_proj.weight, attn.qkv_proj.bias)
            q, k, _ = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            return q, k
        return lin(x, attn.q_proj.weight, attn.q_proj.bias), lin(x, attn.k_proj.weight, attn.k_proj.bias)

    def layer_window(l):
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)
        if window is None:
            return None
        if types is not None:
            return window if types[l] == "sliding_attention" else None
        # Qwen's configs carry a window they do not use.
        return None if getattr(cfg, "use_sliding_window", True) is False else window

    out = {}
    for k, ids in enumerate(prompts):
        acts = {}
        handles = []

        def keep(name, value):
            acts[name] = value.detach().float().clone()

        def norm_hooks(module, prefix):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))

            def pre(_m, args):
                x = args[0].float()
                keep(f"{prefix}.hook_scale", (x.pow(2).mean(-1, keepdim=True) + eps).sqrt())

            def post(_m, _args, output):
                keep(f"{prefix}.hook_normalized", output)

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))

        handles.append(model.model.embed_tokens.register_forward_hook(lambda _m, _a, o: keep("hook_embed", o)))
        for l, layer in enumerate(model.model.layers):
            b = f"blocks.{l}"
            attn = layer.self_attn

            def layer_pre(_m, args, kwargs, b=b):
                keep(f"{b}.hook_resid_pre", args[0] if args else kwargs["hidden_states"])

            def layer_post(_m, _args, output, b=b):
                keep(f"{b}.hook_resid_post", output[0] if isinstance(output, tuple) else output)

            def attn_pre(_m, args, kwargs, b=b, attn=attn, l=l):
                x = kwargs.get("hidden_states", args[0] if args else None)
                cos, sin = kwargs["position_embeddings"]
                t = x.shape[1]
                # The attention's input is ln1's output; its q/k projections as its forward computes them (by the
                # functional form, so that the projections' own hooks record only the real call).
                q, kk = qk_of(attn, x)
                q, kk = q.view(1, t, -1, hd), kk.view(1, t, -1, hd)
                if hasattr(attn, "q_norm"):
                    q, kk = attn.q_norm(q), attn.k_norm(kk)
                rq, rk = rope(q.transpose(1, 2), kk.transpose(1, 2), cos, sin)
                keep(f"{b}.attn.hook_rot_q", rq.transpose(1, 2))
                keep(f"{b}.attn.hook_rot_k", rk.transpose(1, 2))
                group = nh // nkv
                scores = rq @ rk.repeat_interleave(group, dim=1).transpose(2, 3) * attn.scaling
                cap = getattr(cfg, "attn_logit_softcapping", None)
                if cap is not None:
                    scores = torch.tanh(scores / cap) * cap
                allowed = torch.ones(t, t, dtype=torch.bool).tril()
                window = layer_window(l)
                if window is not None:
                    allowed &= torch.ones(t, t, dtype=torch.bool).triu(-(window - 1))
                keep(f"{b}.attn.hook_attn_scores", scores.masked_fill(~allowed, float("-inf")))

            def proj(name, heads):
                return lambda _m, _a, o: keep(name, o.view(1, o.shape[1], heads, hd))

            def o_pre(_m, args, b=b, attn=attn):
                z = args[0].view(1, args[0].shape[1], nh, hd)
                keep(f"{b}.attn.hook_z", z)
                w = attn.o_proj.weight.view(-1, nh, hd)
                keep(f"{b}.attn.hook_result", torch.einsum("bthk,dhk->bthd", z, w))

            gemma = hasattr(layer, "pre_feedforward_layernorm")
            # Gemma norms the attention and MLP outputs before the add: those norms' outputs are what is added.
            attn_out_module = layer.post_attention_layernorm if gemma else attn.o_proj
            mlp_out_module = layer.post_feedforward_layernorm if gemma else layer.mlp.down_proj
            ln2 = layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm
            handles += [
                layer.register_forward_pre_hook(layer_pre, with_kwargs=True),
                layer.register_forward_hook(layer_post),
                attn.register_forward_pre_hook(attn_pre, with_kwargs=True),
                attn.o_proj.register_forward_pre_hook(o_pre),
                attn_out_module.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.hook_attn_out", o)),
                ln2.register_forward_pre_hook(lambda _m, a, b=b: keep(f"{b}.hook_resid_mid", a[0])),
                layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, b=b: keep(f"{b}.mlp.hook_post", a[0])),
                mlp_out_module.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.hook_mlp_out", o)),
            ]
            if hasattr(attn, "qkv_proj"):
                # Phi-3: one fused projection, split as its attention splits it.
                def qkv_post(_m, _a, o, b=b):
                    q, k, v = o.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
                    keep(f"{b}.attn.hook_q", q.view(1, o.shape[1], nh, hd))
                    keep(f"{b}.attn.hook_k", k.view(1, o.shape[1], nkv, hd))
                    keep(f"{b}.attn.hook_v", v.view(1, o.shape[1], nkv, hd))
                handles.append(attn.qkv_proj.register_forward_hook(qkv_post))
            else:
                # With q/k norms (Qwen3, Gemma 3) the queries and keys hooks see are the norms' outputs; Gemma 3
                # norms them as [batch, head, pos, d_head], Qwen3 as [batch, pos, head, d_head].
                def normed(name, t=len(ids)):
                    return lambda _m, _a, o: keep(name, o if o.shape[1] == t else o.transpose(1, 2))

                if hasattr(attn, "q_norm"):
                    q_hook, k_hook = normed(f"{b}.attn.hook_q"), normed(f"{b}.attn.hook_k")
                    q_src, k_src = attn.q_norm, attn.k_norm
                else:
                    q_hook, k_hook = proj(f"{b}.attn.hook_q", nh), proj(f"{b}.attn.hook_k", nkv)
                    q_src, k_src = attn.q_proj, attn.k_proj
                handles += [
                    q_src.register_forward_hook(q_hook),
                    k_src.register_forward_hook(k_hook),
                    attn.v_proj.register_forward_hook(proj(f"{b}.attn.hook_v", nkv)),
                ]
            if hasattr(layer.mlp, "gate_up_proj"):
                def gate_up_post(_m, _a, o, b=b):
                    gate, up = o.chunk(2, dim=-1)
                    keep(f"{b}.mlp.hook_pre", gate)
                    keep(f"{b}.mlp.hook_pre_linear", up)
                handles.append(layer.mlp.gate_up_proj.register_forward_hook(gate_up_post))
            else:
                handles += [
                    layer.mlp.gate_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.mlp.hook_pre", o)),
                    layer.mlp.up_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.mlp.hook_pre_linear", o)),
                ]
            norm_hooks(layer.input_layernorm, f"{b}.ln1")
            norm_hooks(ln2, f"{b}.ln2")
        norm_hooks(model.model.norm, "ln_final")
        with torch.no_grad():
            res = model(torch.tensor([ids]), output_attentions=True)
        for h in handles:
            h.remove()
        # The pattern is Hugging Face's own attention weights (eager attention returns them).
        for l, pattern in enumerate(res.attentions):
            keep(f"blocks.{l}.attn.hook_pattern", pattern)
        keep("logits", res.logits)
        for name, value in acts.items():
            out[f"{k}/{name}"] = value.contiguous()
    return out


if __name__ == "__main__":
    main()
