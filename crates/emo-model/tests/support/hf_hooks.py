"""Hugging Face reference for every hook point: loads a GGUF file as Hugging Face does (f32, eager attention),
runs each prompt alone, and records the activation at each TransformerLens hook point from the modules' own
hooks (inputs and outputs of embed_tokens, the norms, q/k/v/o_proj, gate/up/down_proj, the decoder layers)
and the attention weights Hugging Face returns. Points that no module outputs are computed from module values
with Hugging Face's own functions: the norm scales (from the norm's input and its epsilon), RoPE'd queries
and keys (the model file's apply_rotary_pos_emb on the position embeddings the attention receives), the
scores (its scaling and causal mask), per-head results (z through each head's columns of o_proj).

usage: hf_hooks.py REQUEST.json OUT.safetensors
REQUEST: {"gguf": path, "prompts": [[ids]...], "threads": T}
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
    gguf = req["gguf"]
    folder, name = gguf.rsplit("/", 1)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    rope = sys.modules[type(model.model.layers[0].self_attn).__module__].apply_rotary_pos_emb
    out = {}
    for k, ids in enumerate(req["prompts"]):
        acts = {}
        handles = []

        def keep(name, value):
            acts[name] = value.detach().float().clone()

        def norm_hooks(module, prefix):
            eps = module.variance_epsilon

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

            def attn_pre(_m, args, kwargs, b=b, attn=attn):
                x = kwargs.get("hidden_states", args[0] if args else None)
                cos, sin = kwargs["position_embeddings"]
                t = x.shape[1]
                # The attention's input is ln1's output; its q/k projections as its forward computes them (by the
                # functional form, so that the projections' own hooks record only the real call).
                lin = torch.nn.functional.linear
                q = lin(x, attn.q_proj.weight, attn.q_proj.bias).view(1, t, -1, hd).transpose(1, 2)
                kk = lin(x, attn.k_proj.weight, attn.k_proj.bias).view(1, t, -1, hd).transpose(1, 2)
                rq, rk = rope(q, kk, cos, sin)
                keep(f"{b}.attn.hook_rot_q", rq.transpose(1, 2))
                keep(f"{b}.attn.hook_rot_k", rk.transpose(1, 2))
                group = nh // nkv
                scores = rq @ rk.repeat_interleave(group, dim=1).transpose(2, 3) * attn.scaling
                causal = torch.ones(t, t, dtype=torch.bool).tril()
                keep(f"{b}.attn.hook_attn_scores", scores.masked_fill(~causal, float("-inf")))

            def proj(name, heads):
                return lambda _m, _a, o: keep(name, o.view(1, o.shape[1], heads, hd))

            def o_pre(_m, args, b=b, attn=attn):
                z = args[0].view(1, args[0].shape[1], nh, hd)
                keep(f"{b}.attn.hook_z", z)
                w = attn.o_proj.weight.view(-1, nh, hd)
                keep(f"{b}.attn.hook_result", torch.einsum("bthk,dhk->bthd", z, w))

            handles += [
                layer.register_forward_pre_hook(layer_pre, with_kwargs=True),
                layer.register_forward_hook(layer_post),
                attn.register_forward_pre_hook(attn_pre, with_kwargs=True),
                attn.q_proj.register_forward_hook(proj(f"{b}.attn.hook_q", nh)),
                attn.k_proj.register_forward_hook(proj(f"{b}.attn.hook_k", nkv)),
                attn.v_proj.register_forward_hook(proj(f"{b}.attn.hook_v", nkv)),
                attn.o_proj.register_forward_pre_hook(o_pre),
                attn.o_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.hook_attn_out", o)),
                layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, a, b=b: keep(f"{b}.hook_resid_mid", a[0])),
                layer.mlp.gate_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.mlp.hook_pre", o)),
                layer.mlp.up_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.mlp.hook_pre_linear", o)),
                layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, b=b: keep(f"{b}.mlp.hook_post", a[0])),
                layer.mlp.down_proj.register_forward_hook(lambda _m, _a, o, b=b: keep(f"{b}.hook_mlp_out", o)),
            ]
            norm_hooks(layer.input_layernorm, f"{b}.ln1")
            norm_hooks(layer.post_attention_layernorm, f"{b}.ln2")
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
    save_file(out, out_path)


if __name__ == "__main__":
    main()
