#!/usr/bin/env python3
"""What the per-token emotion readout and a guard cost a served reply (docs/performance.md, "Emotion trace").

    serve_trace.py EMO_BINARY [--rounds 5] [--tokens 64] [--concurrency 1,8]

Starts one `emo serve --device cpu` (SmolLM2, f32) with a direction set of the model's shape (random unit
directions written here: the cost does not depend on their values), then, for each concurrency C, sends
rounds of C simultaneous requests of exactly --tokens new tokens (min_tokens = max_tokens), alternating plain,
traced (`emotion_trace`) and guarded (a guard on anger that never fires, so that its row reads every token)
rounds so that drift in the machine's speed hits each alike. Prints one JSON line per concurrency: generated
tokens per second of each kind (median over rounds) and the ratios to plain. Needs the project venv (torch).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_hostile import post, start, stop  # noqa: E402

EMOTIONS = ["anger", "sadness", "happiness", "fear", "surprise", "disgust"]


def directions_file(path, n_layers=30, d_model=576):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    t = {}
    for site in ("resid_mid", "resid_post"):
        for e in EMOTIONS:
            v = torch.randn(n_layers, d_model, generator=g)
            t[f"{site}.{e}"] = (v / v.norm(dim=-1, keepdim=True)).contiguous()
    save_file(t, path)


def round_trip(url, c, tokens, extra):
    body = {"messages": [{"role": "user", "content": "Tell me a long story about the sea."}], "max_tokens": tokens,
            "min_tokens": tokens, "temperature": 0, **extra}
    results = [None] * c

    def one(i):
        results[i] = post(url, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(c)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    for status, v, _ in results:
        if status != 200:
            raise SystemExit(f"request failed: {status} {v}")
    generated = sum(v["usage"]["completion_tokens"] for _, v, _ in results)
    return generated / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = os.path.join(tmp, "directions.safetensors")
        directions_file(dirs)
        p, url = start(a.binary, "--directions", f"syn={dirs}", "--max-tokens", str(max(a.tokens, 16)))
        try:
            kinds = {
                "plain": {},
                "traced": {"emotion_trace": {}},
                "guarded": {"guard": {"emotion": "anger", "threshold": 1e6, "action": {"steer": {"emotion": "away"}}}},
            }
            for c in [int(x) for x in a.concurrency.split(",")]:
                round_trip(url, c, 8, {})  # warm-up
                speeds = {k: [] for k in kinds}
                for _ in range(a.rounds):
                    for k, extra in kinds.items():
                        speeds[k].append(round_trip(url, c, a.tokens, extra))
                med = {k: statistics.median(v) for k, v in speeds.items()}
                print(json.dumps({
                    "concurrency": c, "tokens": a.tokens, "rounds": a.rounds,
                    "tokens_per_s": {k: round(v, 2) for k, v in med.items()},
                    "traced_over_plain": round(med["traced"] / med["plain"], 4),
                    "guarded_over_plain": round(med["guarded"] / med["plain"], 4),
                }), flush=True)
        finally:
            stop(p)


if __name__ == "__main__":
    main()
