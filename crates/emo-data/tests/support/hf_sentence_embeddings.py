"""Hugging Face transformers reference for the sentence-encoder test: sentence-transformers' recipe written
out with plain transformers (tokenise with truncation to max_seq_length, BertModel, mean pooling over the
attention mask, L2 normalisation), so the test needs no sentence-transformers install.

usage: hf_sentence_embeddings.py MODEL_DIR TEXTS.json
TEXTS.json: a JSON list of strings.
stdout: {"max_seq_length": N, "ids": [[...] per text], "embeddings": [[...] per text]}
"""
import json
import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer


def main() -> None:
    model_dir, texts_path = sys.argv[1], sys.argv[2]
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    torch.set_num_threads(2)
    max_len = 256
    st_config = os.path.join(model_dir, "sentence_bert_config.json")
    if os.path.exists(st_config):
        with open(st_config) as f:
            max_len = json.load(f).get("max_seq_length") or max_len
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids, embeddings = [], []
    # One text at a time: the reference must not depend on padding.
    for text in texts:
        batch = tok([text], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        ids.append(batch["input_ids"][0].tolist())
        embeddings.append(pooled[0].tolist())
    json.dump({"max_seq_length": max_len, "ids": ids, "embeddings": embeddings}, sys.stdout)


if __name__ == "__main__":
    main()
