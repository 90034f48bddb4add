"""Writes a Hugging Face model folder (config.json, sharded *.safetensors with index, tokenizer files) from a
GGUF file, the way users' checkpoints look, for the safetensors loading tests.

usage: save_hf_folder.py GGUF OUT_DIR MAX_SHARD_SIZE
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out, shard = sys.argv[1], sys.argv[2], sys.argv[3]
folder, name = os.path.split(os.path.abspath(gguf))
torch.set_num_threads(2)
gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
# HF refuses to save a model it marked as GGUF-quantized; copy the (dequantized) weights into a plain one.
config = gguf_model.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.load_state_dict(gguf_model.state_dict())
model.save_pretrained(out, max_shard_size=shard, safe_serialization=True)
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
