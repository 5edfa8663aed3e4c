"""Models: a backbone that yields features and one linear head per label space.

``shared`` head mode uses one head over the union of labels; ``multi`` keeps a head per task on
the shared backbone. The backbone is the built-in CNN or any timm model by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hub
from .artifacts import atomic_torch_save, not_torch_file, safe_torch_load
from .errors import MixcdError, closest, unknown_choice
from .generation.models import build_lm
from .registry import Registry
from .sources import PAD

BACKBONES: Registry = Registry("model")
# Model options that change how fine-tuning trains, not the architecture: they stay out of the spec a
# checkpoint must match and out of θ0's cache key.
FINETUNE_ONLY = ("bn", "lora")
NORMS = ("batch", "group", "layer", "none")  # the built-in CNN's normalisation: norm_layer
BN_MODES = ("train", "frozen")  # BatchNorm while fine-tuning: MixcdNet.freeze_batchnorm
POOLINGS = ("first", "mean", "pooler")  # a text backbone's sentence feature: TextBackbone


class MixcdNet(nn.Module):
    """Backbone plus named heads; ``forward(x, head)`` returns that head's logits."""

    def __init__(self, backbone: nn.Module, num_features: int, heads: dict[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.heads = nn.ModuleDict({name: nn.Linear(num_features, n) for name, n in heads.items()})
        self.frozen_bn = False

    def freeze_batchnorm(self) -> int:
        """Hold every BatchNorm layer at its running statistics and affine weights; → layers frozen.

        ``train()`` keeps them in eval mode from then on, so a mixed batch's statistics never reach them
        and a sample's train-mode prediction no longer depends on the rest of its batch.
        """
        layers = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in layers:
            for p in m.parameters():
                p.requires_grad_(False)
        self.frozen_bn = bool(layers)
        self.train(self.training)
        return len(layers)

    def train(self, mode: bool = True) -> MixcdNet:
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, head: str | None = None,
                splits: list[tuple[str, int, int]] | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits of ``head``; or, with ``splits`` = [(head, start, stop), ...], one backbone pass over a
        mixed batch and each row range through its own head (what DDP must see as one forward)."""
        if splits is not None:
            feats = self.features(x)
            return tuple(self.heads[h](feats[a:b]) for h, a, b in splits)
        name = head or next(iter(self.heads))
        return self.heads[name](self.features(x))

    def add_head(self, name: str, num_classes: int) -> None:
        if name not in self.heads:
            ref = next(iter(self.heads.values()))
            self.heads[name] = nn.Linear(self.num_features, num_classes).to(ref.weight.device)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation after a conv: ``batch`` depends on the rest of the batch in train mode; ``group``
    (8 channels a group at most 8 groups), ``layer`` (one group: all channels and positions of a sample)
    and ``none`` do not, so a sample's train-mode prediction is its own (docs/design.md §4.6)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(8, max(1, channels // 4)), channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return nn.Identity()
    raise unknown_choice("model.norm", norm, NORMS)


class SmallCNN(nn.Module):
    """Three conv blocks (~93k parameters at 32/64/128 channels): the CPU default."""

    def __init__(self, in_chans: int = 1, width: int = 32, norm: str = "batch") -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), norm_layer(norm, cout),
                    nn.ReLU(inplace=True)]

        self.net = nn.Sequential(
            *block(in_chans, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.num_features = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@BACKBONES.register("cnn", help="small built-in CNN (CPU default)")
def _cnn(in_chans: int, width: int = 32, norm: str = "batch", **_: Any) -> tuple[nn.Module, int]:
    net = SmallCNN(in_chans, width, norm)
    return net, net.num_features


@BACKBONES.register("timm", help="any timm model by name (model.name=resnet18 ...)")
def _timm(in_chans: int, name: str = "resnet18", pretrained: bool = False, weights: str | None = None,
          drop_rate: float = 0.0, **_: Any) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(name):
        raise MixcdError(f"unknown timm model '{name}'{closest(name, timm.list_models())}; "
                         "see `python -c 'import timm; print(timm.list_models())'`")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if pretrained and not weights:
        if not hub.hub_reachable():
            raise MixcdError(f"timm pretrained weights for '{name}' need the Hugging Face hub, which is "
                             "unreachable; download them elsewhere and pass model.weights=/path/to/file "
                             "(.safetensors/.pth/.bin), or set model.pretrained=false")
        kwargs["pretrained"] = True
    net = timm.create_model(name, **kwargs)
    if weights:
        load_backbone_weights(net, Path(weights))
    return net, int(net.num_features)


class TextBackbone(nn.Module):
    """A Hugging Face encoder fed mixcd's token batches, (n, 2, L): ids and segment ids, PAD where a row is
    shorter than the batch's longest. The feature is the first token's last hidden state (``first``, the
    [CLS] position), the mean over real tokens (``mean``), or the model's own pooler (``pooler``)."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise unknown_choice("model.pooling", pooling, POOLINGS)
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise MixcdError("model.pooling=pooler: this encoder has no pooler; use first or mean")
        self.encoder, self.pooling = encoder, pooling
        # segment ids only reach models that embed them (BERT: 2 types; RoBERTa: 1, pairs told apart by [SEP])
        self.uses_types = int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, types = x[:, 0], x[:, 1]
        mask = ids != PAD
        inputs = {"input_ids": ids.clamp(min=0), "attention_mask": mask.long()}
        if self.uses_types:
            inputs["token_type_ids"] = types.clamp(min=0)
        out = self.encoder(**inputs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "first":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


@BACKBONES.register("hf", help="a Hugging Face encoder (model.name folder or hub name, or model.config for a "
                                "small random one) for text tasks; needs the text extra")
def _hf(in_chans: int, name: str | None = None, config: dict[str, Any] | None = None, pooling: str = "first",
        vocab_size: int = 0, **_: Any) -> tuple[nn.Module, int]:
    hub.require_text_extra("model=hf")
    if not vocab_size:
        raise MixcdError("model=hf reads text: the prior and fine-tune tasks must be text tasks "
                         "(task@prior=text / task@finetune=text, or experiment=text_topics)")
    if (name is None) == (config is None):
        raise MixcdError("model=hf needs exactly one of model.name (a folder or hub name of a pretrained "
                         "encoder) and model.config (the configuration of a randomly initialised one)")
    from transformers import AutoConfig, AutoModel

    if config is not None:
        settings = dict(config)
        kind = settings.pop("model_type", "bert")
        try:
            encoder = AutoModel.from_config(AutoConfig.for_model(kind, **settings, vocab_size=vocab_size))
        except (ValueError, TypeError, KeyError) as exc:
            raise MixcdError(f"model.config does not make a Hugging Face model: {str(exc).splitlines()[0]}") from exc
    else:
        where, _local = hub.hf_location(name)
        try:
            encoder = AutoModel.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise MixcdError(f"could not load the encoder {where}: {str(exc).splitlines()[0]}") from exc
        if vocab_size > encoder.config.vocab_size:
            raise MixcdError(f"the tokenizer has {vocab_size} tokens but {where} embeds only "
                             f"{encoder.config.vocab_size}: give the model's own tokenizer")
    return TextBackbone(encoder, pooling), int(encoder.config.hidden_size)


def check_weights_file(path: Path) -> None:
    """model.weights names a file that could hold weights: there, not a folder, and (unless .safetensors) a
    torch.save archive by its first bytes. Cheap, so it can be asked before any work, without a model."""
    if not path.is_file():
        raise MixcdError(f"model.weights {'is a folder, not a file' if path.is_dir() else 'not found'}: {path}")
    foreign = None if path.suffix == ".safetensors" else not_torch_file(path)
    if foreign:
        raise MixcdError(f"model.weights {path} is not a torch checkpoint: {foreign}, not a torch.save archive "
                         "(another kind of file, or one corrupt or truncated); give a .safetensors/.pth/.bin "
                         "state dict")


def load_backbone_weights(net: nn.Module, path: Path) -> None:
    """Load a local timm-style state dict; classifier keys are dropped, shapes must match."""
    check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        # the first line only: torch's weights-only refusal runs to a dozen lines of advice
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MixcdError(f"could not read model.weights {path} ({type(exc).__name__}"
                         f"{': ' + first if first else ''})") from exc
    if not isinstance(state, dict):
        raise MixcdError(f"model.weights {path} holds a {type(state).__name__}, not a state dict of tensors")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state.get("model"), dict):
        state = state["model"]
    own = net.state_dict()
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}  # epochs, optimiser names, ...
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise MixcdError(f"weights {path} do not fit the model: '{k}' has shape {tuple(state[k].shape)}, "
                         f"model expects {tuple(own[k].shape)} ({len(bad)} mismatched tensors)")
    kept = {k: v for k, v in state.items() if k in own}
    if not kept:
        raise MixcdError(f"weights {path} share no parameter names with the model")
    net.load_state_dict(kept, strict=False)


def create_model(backbone: str, in_chans: int, heads: dict[str, int], vocab_size: int = 0, lm: Any = None,
                 **kwargs: Any) -> MixcdNet:
    """Build backbone ``backbone`` (a registered name) with the given heads; ``in_chans`` for image models,
    ``vocab_size`` (the tokenizer's) for text models."""
    if backbone == "lm":  # a language model predicts tokens with its own output layer: no heads (docs/design.md §10)
        if lm is None:
            raise MixcdError("model=lm reads generation tasks (causal_lm or seq2seq): the prior and fine-tune tasks "
                             "must be generation tasks (dataset generated or pairs)")
        return build_lm(lm.kind, lm.vocab_size, lm.pad_id, lm.eos_id, lm.bos_id, kwargs.get("name"),
                        kwargs.get("config"))
    extra = {"vocab_size": vocab_size} if vocab_size else {}
    net, num_features = BACKBONES.get(backbone)(in_chans=in_chans, **extra, **kwargs)
    return MixcdNet(net, num_features, heads)


def model_spec(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The architecture part of a model config (what must match between checkpoint and model)."""
    return {k: v for k, v in model_cfg.items() if k not in ("weights", "pretrained", *FINETUNE_ONLY)}


def save_model(model: MixcdNet, path: Path, spec: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    atomic_torch_save({"model": model.state_dict(), "spec": spec, "heads": {
        n: h.out_features for n, h in model.heads.items()}, **(extra or {})}, path)


def read_checkpoint(path: Path, spec: dict[str, Any], yours: bool = False) -> dict[str, Any]:
    """A mixcd model checkpoint's contents, refused when unreadable or made for another architecture
    (``yours``: a file the user named, never to be deleted)."""
    ckpt = safe_torch_load(path, what="model checkpoint", yours=yours)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "spec" not in ckpt:
        raise MixcdError(f"{path} is not a mixcd model checkpoint")
    if ckpt["spec"] != spec:
        raise MixcdError(f"checkpoint {path} was made for model {ckpt['spec']}, not {spec}")
    return ckpt


def load_model(path: Path, spec: dict[str, Any], in_chans: int, yours: bool = False,
               vocab_size: int = 0, ckpt: dict[str, Any] | None = None, lm: Any = None
               ) -> tuple[MixcdNet, dict[str, Any]]:
    """Load a mixcd checkpoint (``ckpt``: its contents, already read by `read_checkpoint`) into a model."""
    ckpt = read_checkpoint(path, spec, yours) if ckpt is None else ckpt
    args = {k: v for k, v in spec.items() if k != "backbone"}
    model = create_model(spec["backbone"], in_chans, ckpt["heads"], vocab_size, lm, **args)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise MixcdError(f"checkpoint {path} does not fit the model: {str(exc).splitlines()[0]}") from exc
    return model, ckpt
