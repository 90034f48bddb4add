"""Bad input raises a Python exception naming what was wrong; nothing crashes the interpreter."""
import pytest
import torch

import emotion_circuits as ec


def test_unknown_hook_point(model):
    with pytest.raises(ValueError, match="blocks.3.hook_nothing"):
        model.run_with_hooks("hi", fwd_hooks=[("blocks.3.hook_nothing", lambda a, h: None)])


def test_python_exception_in_hook_keeps_its_type_and_names_the_hook(model):
    def bad(act, hook):
        raise ZeroDivisionError("no")

    with pytest.raises(ZeroDivisionError) as e:
        model.run_with_hooks("hi", fwd_hooks=[("blocks.2.hook_resid_mid", bad)])
    assert any("blocks.2.hook_resid_mid" in n for n in e.value.__notes__)
    # The model still works after the aborted forward.
    assert model("hi").shape[0] == 1


def test_wrong_replacement_shape(model):
    with pytest.raises(ec.EmoError, match="blocks.1.hook_resid_post"):
        model.run_with_hooks("hi", fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: torch.zeros(3))])
    with pytest.raises(TypeError, match="blocks.1.hook_resid_post"):
        model.run_with_hooks("hi", fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: "not a tensor")])


def test_bad_inputs(model):
    with pytest.raises(TypeError, match="input must be"):
        model(3.5)
    with pytest.raises(ValueError, match="missing \"content\""):
        model([{"role": "user"}])
    with pytest.raises(ValueError, match="token id -1"):
        model([5, -1])
    with pytest.raises(TypeError, match="fwd_hooks\\[0\\]"):
        model.run_with_hooks("hi", fwd_hooks=["blocks.1.hook_resid_post"])


def test_missing_model_and_bad_options():
    with pytest.raises(ec.EmoError, match="no-such-model"):
        ec.Model.load("no-such-model")
    with pytest.raises(ValueError, match="dtype"):
        ec.Model.load("smollm2-135m", dtype="int3")


def test_directions_and_pipelines_errors(model, tmp_path):
    with pytest.raises(ValueError, match="joy"):
        ec.Steerer(model, ec.EmotionDirections(torch.zeros(6, 30, 576), torch.zeros(6, 30, 576))).hook("joy")
    with pytest.raises(ec.EmoError, match="576"):
        ec.Steerer(model, ec.EmotionDirections(torch.zeros(6, 30, 8), torch.zeros(6, 30, 8)))
    with pytest.raises(ec.EmoError, match="directions.safetensors"):
        ec.EmotionDirections.load(str(tmp_path / "directions.safetensors"))
    with pytest.raises(ec.EmoError, match="--no-such-flag"):
        ec.paper(out=str(tmp_path / "run"), no_such_flag=1)
