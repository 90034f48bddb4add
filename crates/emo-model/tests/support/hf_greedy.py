"""Shared by the Hugging Face reference scripts: each prompt's logits alone, and its greedy continuation with the
margin between the top two logits at every step (where a margin is tiny, rounding may pick either token)."""
import os

import torch


def logits_and_greedy(model, prompts, out, max_new_tokens):
    """Writes OUT/logits_K.f32 (little-endian f32, [len_K, vocab]) for prompt K and returns (continuations,
    margins). No end-of-sequence token: every step is a plain argmax, as the Rust side's `ignore_eos` decodes."""
    model.generation_config.eos_token_id = None
    continuations, margins = [], []
    for k, ids in enumerate(prompts):
        x = torch.tensor([ids])
        with torch.no_grad():
            model(x).logits[0].float().numpy().astype("<f4").tofile(os.path.join(out, f"logits_{k}.f32"))
            gen = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        continuations.append(gen.sequences[0, len(ids):].tolist())
        margins.append([float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in gen.scores])
    return continuations, margins
