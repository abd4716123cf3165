"""The frozen CLIP teacher: an open_clip model name + pretrained tag, or a local checkpoint.

The teacher is loaded once, frozen, and kept in eval mode. Every image or sentence
batch it embeds increments ``Teacher.forward_passes`` and the process-wide
``teacher_forward_count()``: the teacher-feature cache is the only place the teacher
should run, and a search trial asserts that this count does not move.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, UserError, did_you_mean
from .fs import atomic_path, write_atomic

_FORWARDS = 0
OFFLINE_HELP = (
    "Offline alternatives: set teacher.checkpoint to a local open_clip checkpoint (a folder holding "
    "open_clip_config.json and open_clip_model.safetensors / open_clip_pytorch_model.bin, or a state-dict file "
    "with teacher.model naming its architecture); pre-fill the open_clip/Hugging Face cache (teacher.cache_dir or "
    "HF_HOME) on a machine with network; or use the built-in demo teacher (teacher: {shapes: {}}), built by "
    "`dime-nas teacher train-shapes`."
)
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")


def teacher_forward_count() -> int:
    """Teacher forward passes (batches) run by this process so far, over all teachers."""
    return _FORWARDS


class TeacherLoadError(UserError, RuntimeError):
    """The teacher's weights could not be found or loaded."""


@dataclass(frozen=True)
class TeacherSpec:
    """Where a teacher comes from: a model name + pretrained tag, or a local checkpoint."""

    model: str | None = None  # open_clip model name, e.g. "ViT-L-14"
    pretrained: str | None = None  # open_clip pretrained tag, e.g. "openai"
    checkpoint: str | None = None  # open_clip checkpoint folder, or a state-dict file (then `model` names its architecture)
    cache_dir: str | None = None  # where open_clip keeps downloaded weights

    def __post_init__(self) -> None:
        if not self.checkpoint and not (self.model and self.pretrained):
            raise ConfigError("a teacher needs `model` + `pretrained` (a tag), or `checkpoint` (a local path)",
                              key="teacher")


class Teacher:
    """A frozen open_clip CLIP model with its tokenizer, preprocessing and identity."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, preprocess: Any, identity: dict[str, Any],
                 model_cfg: dict[str, Any], device: str = "cpu"):
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.preprocess, self.identity, self.model_cfg, self.device = (
            tokenizer, preprocess, identity, model_cfg, device)
        self.forward_passes = 0

    # ---- facts ------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def text_cfg(self) -> dict[str, Any]:
        """The teacher's text-tower config (for students that reuse it)."""
        return dict(self.model_cfg["text_cfg"])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model, "context_length", self.model_cfg["text_cfg"].get("context_length", 77)))

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    @property
    def key(self) -> str:
        """Short stable hash of the identity (names cache folders)."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]

    # ---- embedding ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings of preprocessed pixels (B, 3, H, W)."""
        self._count()
        return self.model.encode_image(pixels.to(self.device)).float().cpu()

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings of token ids (B, context_length)."""
        self._count()
        return self.model.encode_text(tokens.to(self.device)).float().cpu()

    def tokenize(self, sentences: list[str]) -> torch.Tensor:
        return self.tokenizer(sentences)

    def encode_texts(self, sentences: list[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(sentences))

    def _count(self) -> None:
        global _FORWARDS
        if self.model.training:
            raise RuntimeError("the teacher is frozen and must stay in eval mode")
        _FORWARDS += 1
        self.forward_passes += 1


def load_teacher(spec: TeacherSpec, device: str = "cpu") -> Teacher:
    """Load and freeze a teacher; errors say plainly what is missing and what to do offline."""
    import open_clip

    if spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if not path.exists():
            raise TeacherLoadError(f"teacher checkpoint not found: {path}")
        if path.is_dir():
            return _load_checkpoint_dir(path, device)
        if not spec.model:
            raise ConfigError("a state-dict checkpoint needs teacher.model naming its open_clip architecture "
                              "(or give a checkpoint folder with open_clip_config.json)", key="teacher.model")
        _check_model_name(spec.model)
        model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=str(path))
        identity = {"model": spec.model, "checkpoint_sha256": file_sha256(path)}
        return Teacher(model, open_clip.get_tokenizer(spec.model), preprocess, identity,
                       open_clip.get_model_config(spec.model), device)
    _check_model_name(spec.model)
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags:
        raise ConfigError(f"open_clip has no pretrained tag {spec.pretrained!r} for {spec.model}; "
                          f"known tags: {', '.join(tags) or 'none'}", key="teacher.pretrained")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=spec.pretrained, cache_dir=spec.cache_dir, require_pretrained=True)
    except RuntimeError as exc:
        raise TeacherLoadError(f"could not load pretrained weights {spec.model}/{spec.pretrained} "
                               f"(no network, or not in the cache): {exc}\n{OFFLINE_HELP}") from None
    identity = {"model": spec.model, "pretrained": spec.pretrained}
    return Teacher(model, open_clip.get_tokenizer(spec.model), preprocess, identity,
                   open_clip.get_model_config(spec.model), device)


def teacher_identity(spec: TeacherSpec) -> dict[str, Any] | None:
    """The identity ``load_teacher(spec)`` would give, without building the model (None if unknown).

    Content hashes of local files, or the model name and tag: what a feature cache is keyed by,
    so a complete cache can be opened without loading the teacher.
    """
    if spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if path.is_dir():
            config_file = path / "open_clip_config.json"
            weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
            if not config_file.is_file() or weights is None:
                return None
            model_cfg = json.loads(config_file.read_text())["model_cfg"]
            return {"weights_sha256": file_sha256(weights),
                    "config_sha256": hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()}
        return {"model": spec.model, "checkpoint_sha256": file_sha256(path)} if path.is_file() else None
    return {"model": spec.model, "pretrained": spec.pretrained}


def _load_checkpoint_dir(path: Path, device: str) -> Teacher:
    import open_clip

    config_file = path / "open_clip_config.json"
    if not config_file.is_file():
        raise TeacherLoadError(f"{path} is not an open_clip checkpoint folder: open_clip_config.json is missing")
    weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise TeacherLoadError(f"no weights in teacher checkpoint folder {path} (expected one of {', '.join(_WEIGHT_FILES)})")
    model_cfg = json.loads(config_file.read_text())["model_cfg"]
    name = f"local-dir:{path}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    # content, not location: a moved checkpoint keeps its identity (and its feature caches)
    identity = {"weights_sha256": file_sha256(weights),
                "config_sha256": hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()}
    return Teacher(model, open_clip.get_tokenizer(name), preprocess, identity, model_cfg, device)


def _check_model_name(name: str | None) -> None:
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        raise ConfigError(f"open_clip does not know model {name!r}" + did_you_mean(str(name), known),
                          key="teacher.model")


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint_dir(model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path,
                        preprocess_cfg: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Save a model in open_clip's local-dir format (loads with ``create_model('local-dir:DIR')``).

    Weights go to ``open_clip_model.safetensors``; files are written under temporary
    names and renamed, so a killed save never leaves a half-written checkpoint.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}, **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_atomic(out / "open_clip_config.json", json.dumps(config, indent=2) + "\n")
    return out
