"""Python hooks, side by side: one forward of a T-token prompt (T = 1, a decoding step's size, and 64) through the default model (SmolLM2-135M, f32,
CPU) with no hooks and with one Python hook per layer that edits the residual stream (adds a vector at every
block's output), in emotion_circuits, TransformerLens (TransformerBridge) and nnsight, all in this process on
the same torch, weights and threads; and, for the cost of one Python hook call, an identity hook at every
hook point emotion_circuits and TransformerLens offer. Rounds are interleaved; each number is a median.

usage: python_hooks.py [--reps N] [--tokens T,T...] [--threads K] [--json OUT]
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

import emotion_circuits as ec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tokens", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    ours = ec.Model.load("smollm2-135m", device="cpu", dtype="float32")
    n_layers, d = ours.cfg["n_layers"], ours.cfg["d_model"]
    v = torch.full((d,), 1e-3)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(ours.path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A plain (unquantized) model with the GGUF file's weights, saved once: TransformerLens boots from a folder.
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    hf.load_state_dict(gguf.state_dict())
    hf_dir = tempfile.mkdtemp(prefix="emo-bench-hf-")
    hf.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(hf_dir, device="cpu", dtype=torch.float32)
    from nnsight import LanguageModel

    nn_model = LanguageModel(hf, tokenizer=tok)

    rows = []
    for tokens in [int(t) for t in a.tokens.split(",")]:
        ids = torch.randint(100, 40000, (1, tokens), generator=torch.Generator().manual_seed(0))
        def add_py(act, hook):
            return act + v

        ours_hooks = [(f"blocks.{l}.hook_resid_post", add_py) for l in range(n_layers)]
        native_hooks = [ec.add(f"blocks.{l}.hook_resid_post", v) for l in range(n_layers)]
        tl_hooks = [(f"blocks.{l}.hook_out", lambda act, hook: act + v) for l in range(n_layers)]

        def nn_plain():
            with nn_model.trace(ids):
                out = nn_model.output.save()
            return out

        def nn_edit():
            with nn_model.trace(ids):
                for layer in nn_model.model.layers:
                    h = layer.output[0] if isinstance(layer.output, tuple) else layer.output
                    h[:] += v
                out = nn_model.output.save()
            return out

        # The cost of one Python hook call: an identity hook at every hook point each library offers.
        calls = {"emotion_circuits": 0, "TransformerLens": 0}

        def counting(lib):
            def hook(act, hook):
                calls[lib] += 1

            return [(lambda name: True, hook)]

        with torch.inference_mode():
            ours.run_with_hooks(ids, fwd_hooks=counting("emotion_circuits"))
            bridge.run_with_hooks(ids, fwd_hooks=counting("TransformerLens"))
        every = {lib: [(lambda name: True, lambda act, hook: None)] for lib in calls}

        cases = {
            "emotion_circuits": lambda: ours(ids),
            "emotion_circuits + Python hooks": lambda: ours.run_with_hooks(ids, fwd_hooks=ours_hooks),
            "emotion_circuits + native hooks": lambda: ours.run_with_hooks(ids, fwd_hooks=native_hooks),
            "transformers": lambda: hf(ids),
            "TransformerLens": lambda: bridge(ids),
            "TransformerLens + hooks": lambda: bridge.run_with_hooks(ids, fwd_hooks=tl_hooks),
            "emotion_circuits + a hook at every point": lambda: ours.run_with_hooks(ids, fwd_hooks=every["emotion_circuits"]),
            "TransformerLens + a hook at every point": lambda: bridge.run_with_hooks(ids, fwd_hooks=every["TransformerLens"]),
            "nnsight": nn_plain,
            "nnsight + edits": nn_edit,
        }
        # The same edit in each library gives the same logits, and differs from no edit: every hook really ran.
        with torch.inference_mode():
            plain = ours(ids)
            edited = {k: cases[k]() for k in ["emotion_circuits + Python hooks", "TransformerLens + hooks", "nnsight + edits"]}
        for k, out in edited.items():
            logits = out.logits if hasattr(out, "logits") else out
            logits = logits[0] if isinstance(logits, tuple) else logits
            diff = (logits.float() - edited["emotion_circuits + Python hooks"]).abs().max().item()
            moved = (logits.float() - plain).abs().max().item()
            assert moved > 1e-4 and diff < 1e-3, f"{k}: moved {moved:.2e} by the edit, {diff:.2e} from emotion_circuits"
            print(f"{k}: the edit moved the logits by up to {moved:.2e}; {diff:.1e} from emotion_circuits' edited logits")
        times = {k: [] for k in cases}
        with torch.inference_mode():
            for _ in range(2):
                for f in cases.values():
                    f()
            for _ in range(a.reps):
                for k, f in cases.items():
                    t = time.perf_counter()
                    f()
                    times[k].append((time.perf_counter() - t) * 1000)
        ms = {k: statistics.median(v) for k, v in times.items()}
        for k in cases:
            base = k.split(" + ")[0]
            n_hooks = calls[base] if "every point" in k else n_layers
            rows.append({"tokens": tokens, "case": k, "hooks": n_hooks if base != k else 0, "ms": round(ms[k], 2), "x_unhooked": round(ms[k] / ms[base], 3),
                         "overhead_ms_per_hook": round((ms[k] - ms[base]) / n_hooks, 4)})
        print(f"\n{tokens} tokens, batch 1, {a.threads} threads, median of {a.reps}")
        print("| case | hooks | ms | x unhooked | ms per hook |")
        print("|---|---:|---:|---:|---:|")
        for r in [r for r in rows if r["tokens"] == tokens]:
            print(f"| {r['case']} | {r['hooks']} | {r['ms']:.1f} | {r['x_unhooked']:.2f} | {r['overhead_ms_per_hook']:.4f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
