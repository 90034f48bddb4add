"""Shared fixtures: the default offline model loaded by emotion_circuits and, in the same process with the
same torch, by Hugging Face transformers (f32, eager attention) as the reference."""
import os
import sys

import pytest
import torch

import emotion_circuits as ec

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "crates", "emo-model", "tests", "support"))

torch.set_num_threads(2)

PROMPTS = ["The meeting moved to Friday, and everyone", "I can't believe you did that to me!"]


@pytest.fixture(scope="session")
def model():
    return ec.Model.load("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def hf(model):
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(model.path)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def emo_bin():
    """The `emo` binary of the same build (scripts/test builds the workspace before running pytest)."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "debug", "emo")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build the workspace first (cargo build --workspace)")
    return path
