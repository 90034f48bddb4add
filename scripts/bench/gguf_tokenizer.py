"""Copies a GGUF file's `tokenizer.*` metadata into a GGUFWriter, for the random benchmark models that borrow
SmolLM2's tokenizer (make_tiny_gguf.py, make_llama3b_gguf.py)."""
import gguf


def copy_tokenizer(src, w, vocab_size=None):
    """Every `tokenizer.*` field of reader `src` into writer `w`; with `vocab_size`, the token list (and its
    types and scores) padded with unused user-defined tokens to that size."""
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        t = field.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            vals = [field.parts[i] for i in field.data]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(v).decode("utf-8") for v in vals]
            else:
                vals = [v.tolist()[0] for v in vals]
            if vocab_size is not None:
                pad = vocab_size - len(vals)
                if name == "tokenizer.ggml.tokens":
                    vals += [f"<|unused_{i}|>" for i in range(pad)]
                elif name == "tokenizer.ggml.token_type":
                    vals += [4] * pad  # user-defined: never produced by merges
                elif name == "tokenizer.ggml.scores":
                    vals += [0.0] * pad
            w.add_array(name, vals)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        elif t == gguf.GGUFValueType.BOOL:
            w.add_bool(name, bool(field.parts[field.data[0]][0]))
        else:
            w.add_uint32(name, int(field.parts[field.data[0]][0]))
