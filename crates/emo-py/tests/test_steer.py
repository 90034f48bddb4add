"""Steering from Python equals `emo generate --steer` from the command line: the same edit, the same reply."""
import json
import subprocess

import torch

import emotion_circuits as ec


def unit_directions(model, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (6, model.cfg["n_layers"], model.cfg["d_model"])
    mid, post = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return ec.EmotionDirections(mid / mid.norm(dim=-1, keepdim=True), post / post.norm(dim=-1, keepdim=True))


def test_steered_generation_equals_the_command_line(model, emo_bin, tmp_path):
    dirs = unit_directions(model, 3)
    path = tmp_path / "directions.safetensors"
    dirs.save(str(path))
    assert torch.equal(ec.EmotionDirections.load(str(path)).resid_post, dirs.resid_post)
    prompt, alpha, n = "How was your day?", 6.0, 16
    cli = subprocess.run(
        [emo_bin, "generate", "--device", "cpu", "--json", "--max-new-tokens", str(n), "--steer", "anger", "--directions", str(path),
         "--alpha", str(alpha), prompt],
        check=True, capture_output=True, text=True,
    )
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    steerer = ec.Steerer(model, dirs, alpha=alpha)
    conv = [{"role": "user", "content": prompt}]
    tokens = model.generate(conv, max_new_tokens=n, fwd_hooks=[steerer.hook("anger")], return_tokens=True)
    assert tokens == expected["token_ids"]
    assert model.generate(conv, max_new_tokens=n, fwd_hooks=[steerer.hook("anger")]) == expected["reply"]
    unsteered = model.generate(conv, max_new_tokens=n, return_tokens=True)
    assert unsteered != tokens, "steering at this alpha changed nothing"


def test_steerer_chat_and_directions_access(model):
    dirs = unit_directions(model, 4)
    assert dirs.get("fear").shape == (model.cfg["n_layers"], model.cfg["d_model"])
    assert torch.equal(dirs.get("fear"), dirs.resid_post[3])
    steerer = ec.Steerer(model, dirs, alpha=4.0)
    reply = steerer.chat("Describe your morning.", emotion="happiness", max_new_tokens=12)
    assert isinstance(reply, str) and reply
    assert steerer.chat("Describe your morning.", max_new_tokens=12) != reply
