"""Hugging Face reference for a base model's GGUF file (no chat template): loads tokenizer and model the way
transformers does (dequantized to f32, eager attention) and records, in one process:
token ids of each text (with and without special-token matching), their decoding, the logits of each prompt
alone, a greedy continuation with the margin between the top two logits at every step, and every hook point
(hf_hooks.record); with a chat template, each conversation rendered by it and its token ids.

usage: hf_gguf_base.py REQUEST.json OUT_DIR
REQUEST: {"gguf": path, "prompts": [text...], "texts": [text...], "max_new_tokens": N, "threads": T,
          "chat_template": Jinja source, "conversations": [[{"role", "content"}...]...]}
OUT_DIR/reference.json: {"prompt_ids", "texts": [{"ids", "plain_ids", "decoded"}], "continuations", "margins",
                         "chats": [{"rendered", "ids"}]}
OUT_DIR/logits_K.f32: little-endian f32 logits of prompt K, [len_K, vocab].
OUT_DIR/hooks.safetensors: every hook point of each prompt, as hf_hooks.py records them.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_greedy import logits_and_greedy  # noqa: E402
from hf_hooks import record  # noqa: E402


def main() -> None:
    req_path, out = sys.argv[1], sys.argv[2]
    with open(req_path) as f:
        req = json.load(f)
    torch.set_num_threads(int(req.get("threads", 2)))
    folder, name = os.path.split(os.path.abspath(req["gguf"]))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    texts = []
    for text in req["texts"]:
        ids = tok(text)["input_ids"]
        # Content as text: special tokens spelled in it are split like any characters, nothing added.
        plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        texts.append({"ids": ids, "plain_ids": plain, "decoded": tok.decode(ids)})
    chats = []
    for conv in req.get("conversations", []):
        rendered = tok.apply_chat_template(conv, chat_template=req["chat_template"], tokenize=False, add_generation_prompt=True)
        chats.append({"rendered": rendered, "ids": tok(rendered)["input_ids"]})
    prompts = [tok(p)["input_ids"] for p in req["prompts"]]
    continuations, margins = logits_and_greedy(model, prompts, out, int(req["max_new_tokens"]))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"prompt_ids": prompts, "texts": texts, "continuations": continuations, "margins": margins, "chats": chats}, f)
    save_file(record(model, prompts), os.path.join(out, "hooks.safetensors"))


if __name__ == "__main__":
    main()
