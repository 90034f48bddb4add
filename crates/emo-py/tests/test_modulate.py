"""Circuit modulation from Python equals `emo generate --modulate` from the command line, on a circuits folder
written here in the format `emo circuits build` writes (seeded neurons, heads and delta_mu)."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import save_file

import emotion_circuits as ec

EMOTIONS = ["anger", "sadness", "happiness", "fear", "surprise", "disgust"]


def write_circuits(model, folder, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    for e in EMOTIONS:
        layers = []
        for layer in range(cfg["n_layers"]):
            neurons = torch.randperm(cfg["d_mlp"], generator=g)[:4].tolist()
            heads = torch.randperm(cfg["n_heads"], generator=g)[:2].tolist()
            layers.append({"layer": layer, "mlp": {"k": 4, "neurons": neurons}, "attention": {"k": 2, "heads": heads}})
        n, h = 4 * cfg["n_layers"], 2 * cfg["n_layers"]
        circuit = {
            "emotion": e, "K_total": n + h, "ratio_mode": "fixed", "ratio_fixed": 0.7,
            "K_alloc": {"mlp": n, "attn": h}, "min_per_layer": {"mlp": 4, "attn": 2}, "cap_ratio": 0.4,
            "summary": {"heads": h, "layers": cfg["n_layers"], "neurons": n}, "layers": layers,
        }
        (folder / f"{e}.json").write_text(json.dumps(circuit))
    d_attn = cfg["n_heads"] * cfg["d_head"]
    save_file({
        "attn": torch.randn(6, cfg["n_layers"], d_attn, generator=g),
        "mlp": torch.randn(6, cfg["n_layers"], cfg["d_mlp"], generator=g),
    }, str(folder / "delta_mu.safetensors"))


def test_modulation_equals_the_command_line(model, emo_bin, tmp_path):
    circuits = tmp_path / "circuits"
    circuits.mkdir()
    write_circuits(model, circuits)
    prompt, n = "Tell me about your weekend.", 16
    cli = subprocess.run(
        [emo_bin, "generate", "--device", "cpu", "--json", "--max-new-tokens", str(n), "--modulate", "sadness", "--circuits", str(circuits), prompt],
        check=True, capture_output=True, text=True,
    )
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    modulator = ec.Modulator(model, str(circuits))
    conv = [{"role": "user", "content": prompt}]
    modulated = model.generate(conv, max_new_tokens=n, fwd_hooks=[modulator.hook("sadness")], return_tokens=True)
    assert modulated == expected["token_ids"]
    assert modulated != model.generate(conv, max_new_tokens=n, return_tokens=True), "the modulation changed nothing"
    reply = modulator.chat(prompt, emotion="sadness", max_new_tokens=12)
    assert isinstance(reply, str) and reply


def test_bad_circuits(model, tmp_path):
    with pytest.raises(ec.EmoError, match="no-circuits"):
        ec.Modulator(model, str(tmp_path / "no-circuits"))
    (tmp_path / "c").mkdir()
    write_circuits(model, tmp_path / "c")
    with pytest.raises(ValueError, match="joy"):
        ec.Modulator(model, str(tmp_path / "c")).hook("joy")
