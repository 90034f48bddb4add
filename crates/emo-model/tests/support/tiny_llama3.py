"""A tiny random Llama-3-style checkpoint (llama3 RoPE scaling, untied embeddings, GQA) saved as a Hugging
Face folder, with HF's logits for a fixed sequence, to test the parts no offline model exercises.

usage: tiny_llama3.py OUT_DIR
"""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64},
)
model = LlamaForCausalLM(cfg).eval()
model.save_pretrained(out, safe_serialization=True)
ids = torch.randint(0, 300, (1, 200), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(ids).logits[0]
json.dump({"ids": ids[0].tolist()}, open(os.path.join(out, "reference.json"), "w"))
logits.float().numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
