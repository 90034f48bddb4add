"""Hugging Face transformers' greedy generation speed on the same GGUF model, threads and forced length as
`emo bench`, for the comparison in docs/performance.md. Prints one JSON line.

usage: hf_generate.py GGUF --batch B --tokens T --new-tokens N --threads K
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.tokens), generator=g)
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
              pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:, :8], **{**kw, "attention_mask": mask[:, :8], "max_new_tokens": 4, "min_new_tokens": 4})
        start = time.perf_counter()
        out = model.generate(ids, **kw)
        secs = time.perf_counter() - start
    produced = (out.shape[1] - a.tokens) * a.batch
    print(json.dumps({"impl": "hf-transformers", "batch": a.batch, "tokens": a.tokens, "new_tokens": a.new_tokens,
                      "threads": a.threads, "generate_s": secs, "generate_tokens_per_s": produced / secs}))


if __name__ == "__main__":
    main()
