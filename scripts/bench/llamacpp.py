"""llama.cpp's speed on a GGUF file, through the xllamacpp wheel's embedded llama-server: greedy completion of
a fixed token prompt, EOS ignored, forced length; batch B = B parallel slots and B concurrent requests.
Prints one JSON line: prefill and decode tokens/s (llama.cpp's own timings at batch 1; wall-clock aggregate
at batch > 1) and the process's peak RSS.

usage: llamacpp.py GGUF --threads T --batch B --tokens P --new-tokens N
"""
import argparse
import json
import resource
import threading
import time

import xllamacpp as xlc

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--tokens", type=int, default=64)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--reps", type=int, default=2)
a = ap.parse_args()

p = xlc.CommonParams()
p.model.path = a.gguf
p.n_parallel = a.batch
p.n_ctx = a.batch * (a.tokens + a.new_tokens + 16)
p.n_batch = max(512, a.tokens)
p.cpuparams.n_threads = a.threads
p.cpuparams_batch.n_threads = a.threads
p.cache_prompt = False  # every request pays its prefill, as emo bench's do
p.warmup = True
server = xlc.Server(p)

# Token ids, not text: the same prompt length whatever the tokenizer (ids below 1000 exist in every vocabulary).
prompt = [100 + (i * 37) % 800 for i in range(a.tokens)]


def request(out, i):
    r = server.handle_completions(
        {"prompt": prompt, "max_tokens": a.new_tokens, "temperature": 0.0, "ignore_eos": True, "cache_prompt": False, "seed": i}
    )
    out[i] = r


def run():
    out = [None] * a.batch
    threads = [threading.Thread(target=request, args=(out, i)) for i in range(a.batch)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, out


run()  # warm-up
best = None
for _ in range(a.reps):
    wall, out = run()
    for r in out:
        if not isinstance(r, dict) or "timings" not in r:
            raise SystemExit(f"llama.cpp answered {str(r)[:300]}")
    produced = sum(r["timings"]["predicted_n"] for r in out)
    line = {
        "engine": "llama.cpp (xllamacpp " + getattr(xlc, "__version__", "?") + ")",
        "gguf": a.gguf,
        "threads": a.threads,
        "batch": a.batch,
        "tokens": a.tokens,
        "new_tokens": a.new_tokens,
        "wall_s": wall,
        "generate_tokens_per_s": produced / wall,
        # Per slot: at batch 1 the pure decoding rate.
        "decode_tokens_per_s": sum(r["timings"]["predicted_per_second"] for r in out) / a.batch,
        "prefill_tokens_per_s": sum(r["timings"]["prompt_per_second"] for r in out) / a.batch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if best is None or line["generate_tokens_per_s"] > best["generate_tokens_per_s"]:
        best = line
print(json.dumps(best))
