"""A Llama-3.2-3B-shaped GGUF with random Q4_0 weights (28 layers, d 3072, 24 heads, 8 KV heads, d_mlp 8192,
vocab 128256, tied embeddings; 1.8 GB), so that speed is measured at the paper's model size. The tokenizer is
SmolLM2's (its vocabulary padded with unused tokens to 128256), which both llama.cpp and emo load.

usage: make_llama3b_gguf.py SMOLLM2_GGUF OUT_GGUF
"""
import sys

import gguf
import numpy as np
from gguf_tokenizer import copy_tokenizer

src = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], "llama")
d, L, ff, nh, nkv, V = 3072, 28, 8192, 24, 8, 128256
hd = d // nh
w.add_block_count(L)
w.add_embedding_length(d)
w.add_feed_forward_length(ff)
w.add_head_count(nh)
w.add_head_count_kv(nkv)
w.add_context_length(4096)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(500000.0)
w.add_rope_dimension_count(hd)
w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)

copy_tokenizer(src, w, vocab_size=V)

rng = np.random.default_rng(0)


def q4_0(name, rows, cols):
    """Random Q4_0 blocks: an f16 scale near 0.002 and 16 bytes of uniform nibbles per 32 weights."""
    blocks = rows * cols // 32
    data = np.empty((blocks, 18), np.uint8)
    data[:, :2] = (0.002 * (1 + 0.2 * rng.random(blocks))).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    data[:, 2:] = rng.integers(0, 256, (blocks, 16), dtype=np.uint8)
    w.add_tensor(name, data.reshape(rows, cols // 32 * 18), raw_dtype=gguf.GGMLQuantizationType.Q4_0)


q4_0("token_embd.weight", V, d)
for l in range(L):
    w.add_tensor(f"blk.{l}.attn_norm.weight", np.ones(d, np.float32))
    w.add_tensor(f"blk.{l}.ffn_norm.weight", np.ones(d, np.float32))
    q4_0(f"blk.{l}.attn_q.weight", nh * hd, d)
    q4_0(f"blk.{l}.attn_k.weight", nkv * hd, d)
    q4_0(f"blk.{l}.attn_v.weight", nkv * hd, d)
    q4_0(f"blk.{l}.attn_output.weight", d, nh * hd)
    q4_0(f"blk.{l}.ffn_gate.weight", ff, d)
    q4_0(f"blk.{l}.ffn_up.weight", ff, d)
    q4_0(f"blk.{l}.ffn_down.weight", d, ff)
w.add_tensor("output_norm.weight", np.ones(d, np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
