"""Hugging Face's answer to examples/interp_basics.rs on the same ids, with module hooks: the residual after
layer 10 (decoder layer 10's output), the last logits with neuron 123 of layer 5 zeroed (a pre-hook on its
down_proj), the attention pattern of layer 3 (eager attention), and greedy generation steered by the
"I love" - "I hate" vector (last tokens) added to decoder layer 6's input at the last prompt token and every
generated token.

usage: hf_interp_basics.py GGUF INPUT_IDS_JSON  -> prints one JSON line with the example's keys.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    gguf, ids = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(2)
    folder, name = gguf.rsplit("/", 1)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    layers = model.model.layers
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
        resid = out.hidden_states[11][0, -1, :8]  # hidden_states[0] is the embedding
        pattern_sum = out.attentions[3][0, 0, -1].sum().item()

        def zero_123(_m, args):
            a = args[0].clone()
            a[..., 123] = 0
            return (a,)

        h = layers[5].mlp.down_proj.register_forward_pre_hook(zero_123)
        top = model(x).logits[0, -1].topk(5)
        h.remove()

        def resid_pre6(text):
            kept = {}

            def keep(_m, a, k):
                kept["x"] = a[0] if a else k["hidden_states"]

            hh = layers[6].register_forward_pre_hook(keep, with_kwargs=True)
            model(torch.tensor([tok(text)["input_ids"]]))
            hh.remove()
            return kept["x"][0, -1]

        v = resid_pre6("I love") - resid_pre6("I hate")

        def add_v(_m, args, kwargs):
            # The prompt's forward: its last token only; each decoding step: its one token.
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[:, -1] += v
            if args:
                return (h,) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = h
            return args, kwargs

        h = layers[6].register_forward_pre_hook(add_v, with_kwargs=True)
        eos = [t for t in {tok.eos_token_id, model.generation_config.eos_token_id} if isinstance(t, int)]
        gen = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=eos[0])
        h.remove()
    text = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
    print(json.dumps({
        "resid_post_10_last_first8": resid.tolist(),
        "ablate_l5_n123_last_logits_top5": [[i, l] for i, l in zip(top.indices.tolist(), top.values.tolist())],
        "pattern_l3_h0_last_row_sum": pattern_sum,
        "steered_text": text,
    }))


if __name__ == "__main__":
    main()
