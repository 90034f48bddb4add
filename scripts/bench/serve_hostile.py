#!/usr/bin/env python3
"""Measurements behind docs/performance.md's "Serving under hostile load" (standard library only).

    serve_hostile.py EMO_BINARY long-prompt [--tokens 5400]
    serve_hostile.py EMO_BINARY memory [--tokens 5400] [--counts 1,2,4]
    serve_hostile.py EMO_BINARY burst [--max-batch 4] [--max-queue 4] [--clients 16]
    serve_hostile.py EMO_BINARY soak --run RUN [--minutes 5] [--clients 8]

Each starts its own `emo serve --device cpu --port 0` (SmolLM2, f32) and prints JSON lines.
- long-prompt: a short request's latency alone (median of 5), and while a long prompt prefills (short
  requests one after another from 0.5 s after it until it ends: median and worst), with chunked prefill at
  several `--prefill-tokens` budgets and with prefill in one piece (a budget above the prompt), in one run.
- memory: peak RSS (VmHWM, reset after a warm-up request so that loading's peak does not count) added by N
  concurrent long prompts (--new-tokens each) over what a warmed-up server holds, per prompt, beside the prompt's key-value cache (layers x 2 x kv heads x d_head x 4 bytes x tokens).
- burst: how many of C simultaneous requests an idle server takes before answering 429.
- soak: C clients for M minutes sending plain, steered, modulated, traced and guarded requests, a third of them
  streamed and dropped after a few chunks; RSS sampled every 10 s, errors by status.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

SENTENCE = "The quick brown fox jumps over the lazy dog. "  # 10 tokens with SmolLM2's tokenizer


def start(binary, *flags):
    p = subprocess.Popen([binary, "serve", "--device", "cpu", "--port", "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://\S+", line)
    if not m:
        p.kill()
        raise SystemExit(f"emo serve did not start: {line!r}")
    return p, m.group(0)


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


def post(url, body, timeout=900):
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            v = json.load(r)
        return 200, v, time.perf_counter() - t
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.perf_counter() - t


def chat(content, max_tokens, **extra):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0}
    body.update(extra)
    return body


def rss_kb(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def long_text(tokens):
    return SENTENCE * max(1, tokens // 10)


def long_prompt(a):
    out = {}
    configs = [(f"chunks of {b}", ["--prefill-tokens", b]) for b in a.budgets.split(",")] + [("one piece", ["--prefill-tokens", "1000000"])]
    for name, flags in configs:
        p, url = start(a.binary, *flags)
        post(url, chat("Hi", 2))  # warm-up
        alone = sorted(post(url, chat("Hi", 2))[2] for _ in range(5))[2]
        res = {}
        th = threading.Thread(target=lambda: res.update(long=post(url, chat(long_text(a.tokens), 1))))
        th.start()
        time.sleep(0.5)
        # Short requests one after another for as long as the long prompt prefills, so that they arrive at
        # every phase of its chunks; the first one 0.5 s after it.
        during = []
        while th.is_alive():
            status, _, took = post(url, chat("Hi", 2))
            during.append(took)
            time.sleep(0.2)
        th.join()
        lstatus, lv, ltime = res["long"]
        during.sort()
        median = during[len(during) // 2] if during else float("nan")
        out[name] = {"short_alone_s": round(alone, 3), "short_during_long_median_s": round(median, 3),
                     "short_during_long_max_s": round(during[-1], 3) if during else None, "shorts_during_long": len(during),
                     "ratio_median": round(median / alone, 2), "ratio_max": round(during[-1] / alone, 2) if during else None,
                     "long_prompt_tokens": lv.get("usage", {}).get("prompt_tokens"), "long_s": round(ltime, 2), "status": [status, lstatus]}
        print(json.dumps({"prefill": name, **out[name]}), flush=True)
        stop(p)


def memory(a):
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, f32.
    kv_per_token = 30 * 2 * 3 * 64 * 4
    for n in [int(x) for x in a.counts.split(",")]:
        modes = [("chunked", []), ("one piece", ["--prefill-tokens", "1000000"])]
        for name, flags in modes[:1] if a.chunked_only else modes:
            p, url = start(a.binary, "--max-batch", "16", *flags)
            post(url, chat("Hi", 16))
            # The peak so far is loading's; from here on it counts from what is resident now.
            with open(f"/proc/{p.pid}/clear_refs", "w") as f:
                f.write("5")
            base = rss_kb(p.pid, "VmHWM")
            results = []
            threads = [threading.Thread(target=lambda: results.append(post(url, chat(long_text(a.tokens), a.new_tokens)))) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            peak = rss_kb(p.pid, "VmHWM")
            tokens = results[0][1]["usage"]["total_tokens"]
            kv_mb = kv_per_token * tokens / 2**20
            added = (peak - base) / 1024
            print(json.dumps({"prefill": name, "concurrent": n, "tokens_each": tokens, "kv_cache_mb_each": round(kv_mb, 1),
                              "peak_added_mb": round(added, 1), "added_per_prompt_mb": round(added / n, 1),
                              "per_prompt_over_kv": round(added / n / kv_mb, 2), "statuses": [r[0] for r in results]}), flush=True)
            stop(p)


def burst(a):
    p, url = start(a.binary, "--max-batch", str(a.max_batch), "--max-queue", str(a.max_queue))
    post(url, chat("Hi", 2))
    barrier = threading.Barrier(a.clients)
    statuses = []

    def one():
        barrier.wait()
        statuses.append(post(url, chat("Write a story.", 24))[0])

    threads = [threading.Thread(target=one) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"max_batch": a.max_batch, "max_queue": a.max_queue, "clients": a.clients,
                      "accepted": statuses.count(200), "refused_429": statuses.count(429),
                      "other": [s for s in statuses if s not in (200, 429)]}), flush=True)
    stop(p)


def stream_and_drop(url, body, chunks):
    """Streams a request and closes the connection after `chunks` data lines."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps({**body, "stream": True}).encode()
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              + f"content-length: {len(data)}\r\n\r\n".encode() + data)
    seen, buf = 0, b""
    while seen < chunks:
        got = s.recv(4096)
        if not got:
            break
        buf += got
        seen = buf.count(b"data: ")
    s.close()
    return b" 200 " in buf[:20]


def soak(a):
    run = a.run
    circuits = os.path.join(run, "circuits", "all")
    p, url = start(a.binary, "--max-batch", "16", "--directions", f"run={run}", "--circuits", f"run={circuits}")
    emotions = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    prompts = ["Tell me about your weekend.", "Describe a rainy day.", "What did you think of the film?", "How was work?"]
    stats = {"ok": 0, "dropped_streams": 0, "errors": {}}
    lock = threading.Lock()
    end = time.time() + a.minutes * 60

    def client(c):
        i = c
        while time.time() < end:
            extra = [
                {},
                {"steering": {"emotion": emotions[i % 6], "alpha": 4.0}},
                {"circuit": {"emotion": emotions[i % 6]}},
                {"emotion_trace": {}},
                # A guard that fires on most replies (threshold 0), so that rows switch edits mid-batch.
                {"emotion_trace": {}, "guard": {"emotion": emotions[i % 6], "threshold": 0.0, "hold": "above",
                                                "action": {"steer": {"emotion": "away", "alpha": 2.0}}}},
            ][i % 5]
            body = chat(prompts[i % 4], 24, **extra)
            try:
                if i % 3 == c % 3 and i % 2 == 0:
                    ok = stream_and_drop(url, body, 4)
                    with lock:
                        if ok:
                            stats["dropped_streams"] += 1
                        else:
                            stats["errors"]["stream"] = stats["errors"].get("stream", 0) + 1
                else:
                    status, _, _ = post(url, body)
                    with lock:
                        if status == 200:
                            stats["ok"] += 1
                        else:
                            stats["errors"][str(status)] = stats["errors"].get(str(status), 0) + 1
            except Exception as e:  # counted, never fatal
                with lock:
                    stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
            i += a.clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    samples = []
    t0 = time.time()
    while any(t.is_alive() for t in threads):
        samples.append((round(time.time() - t0), round(rss_kb(p.pid) / 1024, 1)))
        time.sleep(10)
    for t in threads:
        t.join()
    status, _, _ = post(url, chat("Hi", 2))
    print(json.dumps({"minutes": a.minutes, "clients": a.clients, **stats, "rss_mb_every_10s": samples, "after": status}), flush=True)
    stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("long-prompt")
    s.add_argument("--tokens", type=int, default=5400)
    s.add_argument("--budgets", default="512,256,128,64", help="--prefill-tokens values to compare")
    s = sub.add_parser("memory")
    s.add_argument("--tokens", type=int, default=5400)
    s.add_argument("--counts", default="1,2,4")
    s.add_argument("--new-tokens", type=int, default=16)
    s.add_argument("--chunked-only", action="store_true", help="skip the one-piece prefill")
    s = sub.add_parser("burst")
    s.add_argument("--max-batch", type=int, default=4)
    s.add_argument("--max-queue", type=int, default=4)
    s.add_argument("--clients", type=int, default=16)
    s = sub.add_parser("soak")
    s.add_argument("--run", required=True)
    s.add_argument("--minutes", type=float, default=5)
    s.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    {"long-prompt": long_prompt, "memory": memory, "burst": burst, "soak": soak}[a.cmd](a)


if __name__ == "__main__":
    main()
