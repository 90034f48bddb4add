"""A tiny checkpoint with random weights for one model family, written by Hugging Face transformers with the
family's features switched on, and Hugging Face's answers on it: logits for two prompts of different lengths
(each alone) and 32 greedy tokens for each, with the margin between the top two logits at every step.

usage: tiny_family.py FAMILY OUT_DIR
       tiny_family.py --chat TOKENIZER.gguf OUT_ROOT FAMILY...
OUT_DIR: the checkpoint (config.json, model.safetensors), reference.json {"prompts", "continuations",
         "margins"}, logits_K.f32 (little-endian f32, [len_K, vocab]), hooks.safetensors (every hook point of
         each prompt, as hf_hooks.py records them).
--chat: for each FAMILY, OUT_ROOT/FAMILY holds the checkpoint alone, its vocabulary widened to the GGUF file's
        tokenizer, which is saved beside it with its chat template: a model every command can load and talk to.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_greedy import logits_and_greedy  # noqa: E402
from hf_hooks import record  # noqa: E402

FAMILIES = {
    # Qwen3: per-head q/k RMSNorm, no q/k/v bias, a head width that is not d_model / n_heads, grouped-query
    # attention, untied embeddings.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False)),
    # Mistral: Llama with a sliding window, here 8 tokens, shorter than both prompts and the generation.
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=8)),
    # Phi-3: fused qkv_proj and gate_up_proj, a sliding window (Phi-3-mini-4k has 2047; here 12).
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=12, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)),
    # Phi-3 with LongRoPE (Phi-3-mini-128k's scaling): a pre-training context of 32 tokens, so that the 23-token
    # prompt starts on the short factors and crosses to the long ones while generating, and the 37-token prompt is
    # on the long ones from the start; cos/sin scaled by sqrt(1 + ln(512 / 32) / ln(32)).
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=32,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 4.0],
                      "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 20.0]})),
    # Phi-4-mini's shape (model_type phi3): RoPE on the first three quarters of each head only, with LongRoPE.
    "phi4": ("Phi3Config", "Phi3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=32,
        partial_rotary_factor=0.75, rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0, 2.6, 3.4],
                                      "long_factor": [1.0, 2.0, 3.5, 6.0, 10.0, 16.0]})),
    # Gemma 2: (1 + w) norms (randomised below), scaled embedding, sandwich norms, tanh-GELU, soft-capping tight
    # enough to bite, query_pre_attn_scalar unlike d_head, an 8-token window on layers 0 and 2, tied embeddings.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=8,
        query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager")),
    # Gemma 3 (text): Gemma's conventions with (1 + w) q/k norms, five local layers (8-token window, RoPE base
    # 10,000) and one global layer (base 1,000,000), no soft-capping, tied embeddings.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=8,
        query_pre_attn_scalar=24, pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")),
}


def tiny(family, **overrides):
    """The family's tiny model with random weights (seeded), widened so that greedy steps are decided."""
    cfg_cls, model_cls, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**{**kwargs, **overrides})
    model = getattr(transformers, model_cls)(cfg).eval()
    # Eager attention, so that the attention weights (the pattern) are returned.
    model.config._attn_implementation = "eager"
    # Random weights at the default init give near-uniform logits; widen them so that greedy steps are decided.
    # Norm weights move off their initial value too, so that a norm read the wrong way shows.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def with_chat(tokenizer_gguf, out_root, families) -> None:
    folder, name = os.path.split(os.path.abspath(tokenizer_gguf))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for family in families:
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        # The chat prompts run to about 65 tokens: a window of 32 still bites, yet across three layers the last
        # token still sees the system prompt's emotion (with 8 it does not, and every direction is zero).
        window = {"sliding_window": 32} if "sliding_window" in FAMILIES[family][2] else {}
        model = tiny(family, vocab_size=len(tok), **window, **{k: v for k, v in ids.items() if v is not None})
        out = os.path.join(out_root, family)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)


def main() -> None:
    if sys.argv[1] == "--chat":
        with_chat(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    family, out = sys.argv[1], sys.argv[2]
    model = tiny(family)
    model.save_pretrained(out, safe_serialization=True)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (n,), generator=gen).tolist() for n in (23, 37)]
    continuations, margins = logits_and_greedy(model, prompts, out, 32)
    json.dump({"prompts": prompts, "continuations": continuations, "margins": margins},
              open(os.path.join(out, "reference.json"), "w"))
    save_file(record(model, prompts), os.path.join(out, "hooks.safetensors"))


if __name__ == "__main__":
    main()
