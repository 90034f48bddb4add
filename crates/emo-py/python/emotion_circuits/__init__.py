"""emotion-circuits from Python: find and control the mechanisms that make language models express emotion
(after "Do LLMs Feel? Emotion Circuits Discovery and Control", arXiv 2510.11328).

The Rust core runs the model; tensors cross to and from PyTorch without copies (both sides hold the same
LibTorch tensor), so this package needs the torch it was built against (2.11) in the same environment.

    import emotion_circuits as ec
    model = ec.Model.load("smollm2-135m")
    logits, cache = model.run_with_cache("The meeting moved to Friday.")
    cache["resid_post", 10]                      # [1, pos, d_model]
    model.run_with_hooks(text, fwd_hooks=[("blocks.5.mlp.hook_post", fn)])
    model.generate(text, max_new_tokens=20, fwd_hooks=[ec.zero("blocks.5.mlp.hook_post", [123])])
    ec.paper(out="runs/paper", limit=2)          # sections 5-7, resumable, with progress bars
"""
import torch as _torch  # first: the extension links the LibTorch this import loads

if not _torch.__version__.startswith("2.11."):
    raise ImportError(
        f"emotion_circuits was built against torch 2.11 and shares its tensors; this environment has torch "
        f"{_torch.__version__} (pip install torch==2.11.0)"
    )

from ._native import (  # noqa: E402
    ActivationCache,
    EmoError,
    EmotionDirections,
    Hook,
    HookPoint,
    Model,
    Modulator,
    Steerer,
    add,
    scale,
    zero,
)
from .pipelines import (  # noqa: E402
    attribute,
    circuits,
    directions,
    elicit,
    emo,
    importance,
    merge,
    modulate,
    paper,
    report,
    section5,
    steer,
    sweep,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "EmoError",
    "EmotionDirections",
    "Hook",
    "HookPoint",
    "Model",
    "Modulator",
    "Steerer",
    "add",
    "scale",
    "zero",
    "attribute",
    "circuits",
    "directions",
    "elicit",
    "emo",
    "importance",
    "merge",
    "modulate",
    "paper",
    "report",
    "section5",
    "steer",
    "sweep",
]
