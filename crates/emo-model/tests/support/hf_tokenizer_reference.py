#!/usr/bin/env python3
"""Reference tokenization and chat rendering from Hugging Face transformers, for the Rust parity tests.

Loads only the tokenizer of a GGUF model (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`), reads a
JSON request from a file or stdin, and prints a JSON answer on stdout:

request:  {"conversations": [[{"role": ..., "content": ...}, ...], ...],
           "raw": ["text", ...],
           "templates": ["jinja source", ...]}          # optional extra templates to render each conversation with
answer:   {"conversations": [{"rendered": str, "ids": [int], "ids_upstream": [int], "extra": [str]}],
           "raw": [{"text", "ids", "ids_plain", "ids_upstream", "ids_upstream_plain", "decoded", "decoded_skip"}],
           "bos_token", "eos_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id",
           "vocab_len", "chat_template", "pre", "transformers_version", "load_seconds", "total_seconds"}

`ids` come from transformers' GGUF tokenizer as loaded. `ids_upstream` come from the same tokenizer with the
pre-tokenizer of the model's original `tokenizer.json`, where transformers' GGUF converter does not restore
it: for `tokenizer.ggml.pre = "smollm"` it falls back to GPT-2's split, while SmolLM's tokenizer (and
llama.cpp) isolate every digit first. Elsewhere the two are the same tokenizer.

With --save-dir the tokenizer is also saved there (`save_pretrained`), to test loading the Hugging Face
folder layout.

Usage: hf_tokenizer_reference.py --model-dir DIR --gguf FILE.gguf [--input request.json] [--save-dir DIR]
"""
import argparse
import copy
import json
import sys
import time


# Byte sizes of GGUF's fixed-size value types (uint8 .. float64), by type id; 8 is string, 9 array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_gguf_string(path, wanted):
    """One string value from a GGUF header, skipping the rest (gguf.GGUFReader would parse all 150k
    vocabulary entries into arrays first, which takes seconds)."""
    import struct

    with open(path, "rb") as f:
        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")

        def read_str():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def skip(value_type):
            if value_type == 8:
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, 1)
            elif value_type == 9:
                item_type, count = struct.unpack("<IQ", f.read(12))
                if item_type in _GGUF_SIZES:
                    f.seek(_GGUF_SIZES[item_type] * count, 1)
                else:
                    for _ in range(count):
                        skip(item_type)
            else:
                f.seek(_GGUF_SIZES[value_type], 1)

        for _ in range(n_kv):
            key = read_str()
            (value_type,) = struct.unpack("<I", f.read(4))
            if key == wanted and value_type == 8:
                return read_str()
            skip(value_type)
    return None


def main():
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--gguf", required=True, help="file name of the GGUF model inside --model-dir")
    ap.add_argument("--input", default="-", help="request JSON file, or - for stdin (default)")
    ap.add_argument("--save-dir", help="also save the tokenizer here with save_pretrained")
    args = ap.parse_args()

    request = json.load(sys.stdin if args.input == "-" else open(args.input, encoding="utf-8"))

    import transformers
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    t_load = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
    load_seconds = time.perf_counter() - t_load

    pre = read_gguf_string(f"{args.model_dir}/{args.gguf}", "tokenizer.ggml.pre")

    upstream = tok.backend_tokenizer
    if pre == "smollm":
        upstream = copy.deepcopy(tok.backend_tokenizer)
        upstream.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )

    def upstream_ids(text, add_special_tokens):
        return upstream.encode(text, add_special_tokens=add_special_tokens).ids

    conversations = []
    for messages in request.get("conversations", []):
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        extra = [
            tok.apply_chat_template(messages, chat_template=t, tokenize=False, add_generation_prompt=True)
            for t in request.get("templates", [])
        ]
        conversations.append(
            {
                "rendered": rendered,
                "ids": tok(rendered)["input_ids"],
                "ids_upstream": upstream_ids(rendered, True),
                "extra": extra,
            }
        )

    raw = []
    for text in request.get("raw", []):
        ids = tok(text)["input_ids"]
        raw.append(
            {
                "text": text,
                "ids": ids,
                "ids_plain": tok(text, add_special_tokens=False)["input_ids"],
                "ids_upstream": upstream_ids(text, True),
                "ids_upstream_plain": upstream_ids(text, False),
                "decoded": tok.decode(ids),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )

    if args.save_dir:
        tok.save_pretrained(args.save_dir)

    answer = {
        "transformers_version": transformers.__version__,
        "tokenizer_class": type(tok).__name__,
        "pre": pre,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "vocab_len": len(tok),
        "chat_template": tok.chat_template,
        "conversations": conversations,
        "raw": raw,
        "load_seconds": load_seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    json.dump(answer, sys.stdout, ensure_ascii=False)
    print(f"hf_tokenizer_reference: {args.gguf}: tokenizer loaded in {load_seconds:.1f}s, "
          f"{time.perf_counter() - t0:.1f}s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
