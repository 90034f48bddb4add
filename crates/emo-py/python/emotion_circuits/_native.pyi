"""Type stubs of the native module (the Rust core's bindings)."""
from os import PathLike
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

Message = dict[str, str]
Conversation = list[Message]
Input = Union[str, list[str], Conversation, list[Conversation], list[int], list[list[int]], torch.Tensor]
HookFn = Callable[[torch.Tensor, "HookPoint"], Optional[torch.Tensor]]
FwdHooks = Sequence[Union[tuple[Union[str, Callable[[str], bool]], HookFn], "Hook"]]
NamesFilter = Union[None, str, list[str], Callable[[str], bool]]

class EmoError(RuntimeError):
    """An error from the Rust core, with its message."""

class HookPoint:
    """Where a Python hook runs."""
    @property
    def name(self) -> str: ...
    @property
    def layer(self) -> Optional[int]: ...

class Hook:
    """A hook that runs in Rust (ablation, scaling, added vector, steering, modulation)."""

def zero(name: str, units: Sequence[int], positions: str = "all") -> Hook:
    """Zero-ablates `units` (neurons, heads, channels) at hook point `name`."""

def scale(name: str, units: Sequence[int], factor: float, positions: str = "all") -> Hook:
    """Multiplies `units` at `name` by `factor`."""

def add(name: str, vector: torch.Tensor, alpha: Optional[float] = None, positions: str = "all") -> Hook:
    """Adds `vector` at `name` (times alpha and the activation's RMS when `alpha` is given)."""

class ActivationCache:
    """The activations of one forward: `cache["blocks.10.hook_resid_post"]`, `cache["resid_post", 10]`."""
    def __getitem__(self, key: Union[str, tuple[str, int]]) -> torch.Tensor: ...
    def __contains__(self, name: str) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...
    @property
    def tokens(self) -> torch.Tensor: ...
    @property
    def mask(self) -> torch.Tensor: ...
    def accumulated_resid(self, layer: Optional[int] = None, incl_mid: bool = False) -> tuple[torch.Tensor, list[str]]: ...
    def decompose_resid(self, layer: Optional[int] = None) -> tuple[torch.Tensor, list[str]]: ...

class Model:
    """A loaded chat model run by the Rust core."""
    @staticmethod
    def load(
        name_or_path: str = "smollm2-135m",
        device: str = "cpu",
        dtype: str = "float32",
        weights: str = "dequantized",
        chat_template: Optional[str] = None,
    ) -> "Model": ...
    @property
    def cfg(self) -> dict[str, Any]: ...
    @property
    def path(self) -> str: ...
    def hook_names(self) -> list[str]: ...
    def to_tokens(self, input: Input) -> torch.Tensor: ...
    def to_string(self, tokens: Union[torch.Tensor, list[int], list[list[int]]]) -> Union[str, list[str]]: ...
    def to_str_tokens(self, input: Input) -> list[str]: ...
    def __call__(self, input: Input, fwd_hooks: Optional[FwdHooks] = None) -> torch.Tensor: ...
    def run_with_hooks(self, input: Input, fwd_hooks: Optional[FwdHooks] = None) -> torch.Tensor: ...
    def run_with_cache(
        self, input: Input, names_filter: NamesFilter = None, fwd_hooks: Optional[FwdHooks] = None
    ) -> tuple[torch.Tensor, ActivationCache]: ...
    def generate(
        self,
        input: Input,
        max_new_tokens: int = 50,
        fwd_hooks: Optional[FwdHooks] = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        return_tokens: bool = False,
    ) -> Union[str, list[str], list[int], list[list[int]]]: ...

class EmotionDirections:
    """Emotion directions `[6, n_layers, d_model]` at resid_mid and resid_post."""
    emotions: list[str]
    def __init__(self, resid_mid: torch.Tensor, resid_post: torch.Tensor) -> None: ...
    @staticmethod
    def load(path: Union[str, PathLike]) -> "EmotionDirections": ...
    def save(self, path: Union[str, PathLike]) -> None: ...
    @property
    def resid_mid(self) -> torch.Tensor: ...
    @property
    def resid_post(self) -> torch.Tensor: ...
    def get(self, emotion: str, site: str = "resid_post") -> torch.Tensor: ...

class Steerer:
    """Steering with emotion directions (paper section 5)."""
    def __init__(
        self,
        model: Model,
        directions: Union[EmotionDirections, str, PathLike],
        alpha: float = 8.0,
        layers: Optional[tuple[int, int]] = None,
        positions: str = "last-prompt-and-generated",
        site: str = "resid_post",
    ) -> None: ...
    def hook(self, emotion: str) -> Hook: ...
    def chat(self, messages: Union[str, Conversation], emotion: Optional[str] = None, max_new_tokens: Optional[int] = None) -> str: ...

class Modulator:
    """Circuit modulation (paper section 7)."""
    def __init__(self, model: Model, circuits: Union[str, PathLike], scale: float = 1.0) -> None: ...
    def hook(self, emotion: str, scale: Optional[float] = None) -> Hook: ...
    def chat(self, messages: Union[str, Conversation], emotion: Optional[str] = None, max_new_tokens: Optional[int] = None) -> str: ...

def run_command(args: list[str]) -> None:
    """Runs one `emo` command line in this process."""

def set_progress(callback: Optional[Callable[[str], None]] = None) -> None:
    """Sends progress bars to `callback(line)`, or back to stderr."""
