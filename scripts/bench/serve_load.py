#!/usr/bin/env python3
"""Bounded load test of `emo serve` over loopback, standard library only.

    serve_load.py URL --requests N --concurrency C --max-tokens T --mix plain,steer,circuit

Sends N chat completions (prompts and controls cycled from a fixed list, so two runs send the same requests),
at most C at a time, each forced to exactly T new tokens (min_tokens = max_tokens) so that throughput
compares like with like. Prints one JSON object: wall seconds, completion tokens/s, latency p50/p95 and
errors by status.
"""
import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [
    "Tell me about your weekend.",
    "What is your favourite food?",
    "Describe a rainy day in the city.",
    "How was the meeting this morning?",
    "Write a note to a neighbour about the garden.",
    "What did you think of the film?",
    "Describe your walk to work.",
    "Tell me about the last book you read.",
]
EMOTIONS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]


def controls(kind, i):
    emotion = EMOTIONS[i % len(EMOTIONS)]
    if kind == "plain":
        return {}
    if kind == "steer":
        return {"steering": {"emotion": emotion, "alpha": 4.0}}
    if kind == "circuit":
        return {"circuit": {"emotion": emotion, "scale": 1.0}}
    raise SystemExit(f"unknown request kind {kind!r} (plain, steer, circuit)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--mix", default="plain,steer,circuit")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args()
    kinds = a.mix.split(",")
    bodies = []
    for i in range(a.requests):
        body = {
            "model": a.model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": a.max_tokens,
            "min_tokens": a.max_tokens,
            "temperature": 0,
        }
        body.update(controls(kinds[i % len(kinds)], i // len(kinds)))
        bodies.append(json.dumps(body).encode())

    latencies, tokens, errors = [], [0], {}
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                if next_i[0] >= len(bodies):
                    return
                body = bodies[next_i[0]]
                next_i[0] += 1
            req = urllib.request.Request(f"{a.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
            if a.api_key:
                req.add_header("Authorization", f"Bearer {a.api_key}")
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    v = json.load(r)
                n = v["usage"]["completion_tokens"]
                with lock:
                    latencies.append(time.perf_counter() - t)
                    tokens[0] += n
            except urllib.error.HTTPError as e:
                with lock:
                    errors[str(e.code)] = errors.get(str(e.code), 0) + 1
            except Exception as e:  # connection refused, timeout: counted, never fatal
                with lock:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    print(json.dumps({
        "concurrency": a.concurrency,
        "requests": a.requests,
        "mix": a.mix,
        "max_tokens": a.max_tokens,
        "wall_s": round(wall, 3),
        "completion_tokens": tokens[0],
        "tokens_per_s": round(tokens[0] / wall, 2),
        "latency_p50_s": pct(0.5) and round(pct(0.5), 3),
        "latency_p95_s": pct(0.95) and round(pct(0.95), 3),
        "latency_mean_s": lat and round(statistics.mean(lat), 3),
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
