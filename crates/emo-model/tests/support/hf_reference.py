"""Hugging Face transformers reference for the parity tests: loads a GGUF file the way HF does (dequantized to
f32), renders each conversation with HF's chat template, and records token ids, last-position logits and a
greedy continuation.

usage: hf_reference.py REQUEST.json OUT_DIR
REQUEST: {"gguf": path, "conversations": [[{"role", "content"}...]...], "max_new_tokens": N, "eos_token_ids": [...],
          "threads": T, "penalised": [conversation indices that also run the steering and modulation settings]}
OUT_DIR/reference.json: {"items": [{"rendered", "ids", "continuation", "continuation_steering",
                          "continuation_modulation", "logits_file"}], "load_s"}
OUT_DIR/logits_K.f32: little-endian f32 last-position logits of conversation K.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    req_path, out_dir = sys.argv[1], sys.argv[2]
    with open(req_path) as f:
        req = json.load(f)
    torch.set_num_threads(int(req.get("threads", 2)))
    os.makedirs(out_dir, exist_ok=True)
    folder, name = os.path.split(os.path.abspath(req["gguf"]))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    load_s = time.time() - t0
    items = []
    for k, conv in enumerate(req["conversations"]):
        rendered = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1].float().numpy()
            gen = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=int(req["max_new_tokens"]),
                eos_token_id=req["eos_token_ids"],
                pad_token_id=req["eos_token_ids"][0],
            )[0, len(ids):].tolist()
            # The paper's steering and modulation settings (spec section 3), Hugging Face's processors: their
            # semantics do not depend on the conversation, so only the ones the request names are run.
            penalised = {}
            for name, penalty in (("steering", 1.05), ("modulation", 1.1)) if k in req.get("penalised", []) else ():
                penalised[name] = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    do_sample=False,
                    max_new_tokens=int(req["max_new_tokens"]),
                    min_new_tokens=10,
                    repetition_penalty=penalty,
                    no_repeat_ngram_size=3,
                    eos_token_id=req["eos_token_ids"],
                    pad_token_id=req["eos_token_ids"][0],
                )[0, len(ids):].tolist()
        logits_file = os.path.join(out_dir, f"logits_{k}.f32")
        logits.astype("<f4").tofile(logits_file)
        items.append({"rendered": rendered, "ids": ids, "continuation": gen, "logits_file": logits_file,
                      "continuation_steering": penalised.get("steering"),
                      "continuation_modulation": penalised.get("modulation")})
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"items": items, "load_s": load_s}, f)


if __name__ == "__main__":
    main()
