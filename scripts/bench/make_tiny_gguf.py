"""A tiny random Llama GGUF (2 layers, d 64, 27 MB) with SmolLM2's real tokenizer and chat template: small
enough to carry to a GPU machine for the CUDA smoke test (scripts/bench/cuda_smoke.sh).

usage: make_tiny_gguf.py SMOLLM2_GGUF OUT_GGUF
"""
import sys

import gguf
import numpy as np
from gguf_tokenizer import copy_tokenizer

src = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], 'llama')
d, L, ff, nh, nkv = 64, 2, 128, 4, 2
w.add_block_count(L); w.add_embedding_length(d); w.add_feed_forward_length(ff)
w.add_head_count(nh); w.add_head_count_kv(nkv); w.add_context_length(512)
w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
copy_tokenizer(src, w)
rng = np.random.default_rng(0)
V = 49152
def t(name, *shape, scale=0.05):
    w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))
t('token_embd.weight', V, d, scale=0.5)
t('output.weight', V, d, scale=0.5)
for l in range(L):
    w.add_tensor(f'blk.{l}.attn_norm.weight', np.ones(d, np.float32))
    w.add_tensor(f'blk.{l}.ffn_norm.weight', np.ones(d, np.float32))
    t(f'blk.{l}.attn_q.weight', nh*16, d); t(f'blk.{l}.attn_k.weight', nkv*16, d); t(f'blk.{l}.attn_v.weight', nkv*16, d)
    t(f'blk.{l}.attn_output.weight', d, nh*16)
    t(f'blk.{l}.ffn_gate.weight', ff, d); t(f'blk.{l}.ffn_up.weight', ff, d); t(f'blk.{l}.ffn_down.weight', d, ff)
w.add_tensor('output_norm.weight', np.ones(d, np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
