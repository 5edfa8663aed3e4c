"""Reaching outside the machine: the Hugging Face hub probe and the optional text extra.

Models (timm weights, Hugging Face encoders) and text data (hub datasets) both ask here, so the
probe sits below both instead of one importing the other for it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .errors import MixcdError

TEXT_EXTRA = "pip install -e '.[text]'  (transformers, tokenizers, datasets, peft, sacrebleu)"


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers; offline machines fail here in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def text_extra_installed() -> bool:
    """Whether the ``text`` extra (transformers, tokenizers, datasets) is importable."""
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("transformers", "tokenizers", "datasets"))


def require_text_extra(what: str) -> None:
    """One clear line when ``what`` needs the text extra and it is not installed."""
    if not text_extra_installed():
        raise MixcdError(f"{what} needs the text extra: {TEXT_EXTRA}")


def hf_location(name: str) -> tuple[str, bool]:
    """A model name as Hugging Face loads it: (local folder, True) or (hub name, False) when the hub answers;
    a folder path that does not exist, or a hub name while offline, is one clear error (in seconds)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if name.startswith((".", "/", "~")) or path.suffix or name.count("/") > 1:
        raise MixcdError(f"model folder not found: {path}")
    if not hub_reachable():
        raise MixcdError(f"model '{name}' is not a local folder and the Hugging Face hub is unreachable: download it "
                         "elsewhere (save_pretrained of the model and its tokenizer) and pass "
                         "model.name=/path/to/folder")
    return name, False
