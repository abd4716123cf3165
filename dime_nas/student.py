"""StudentConfig: a sampled student architecture as data, and the builder that turns
it into an open_clip model.

A StudentConfig is the only input the builder takes. It round-trips through JSON, and
its ``arch_key`` (a short hash of the canonical JSON) names trials, de-duplicates
samples and labels Pareto points. ``open_clip_config()`` writes the exact model-config
JSON open_clip reads, so a saved student loads with plain ``open_clip.create_model``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .tokens import VOCAB_SIZE

VISION_KINDS = ("vit", "timm")
TEXT_KINDS = ("teacher", "transformer")


@dataclass(frozen=True)
class VisionTowerConfig:
    """Image tower: a ViT (layers/width/heads/...) or a timm trunk by name."""

    kind: str = "vit"  # "vit" or "timm"
    image_size: int = 224  # input resolution in pixels (square)
    layers: int | None = None  # ViT: transformer blocks
    width: int | None = None  # ViT: token width
    heads: int | None = None  # ViT: attention heads (width // heads = head width)
    mlp_ratio: float | None = None  # ViT: MLP hidden size / width
    patch_size: int | None = None  # ViT: square patch side in pixels
    # timm: model name, e.g. "convnext_atto". Must accept any input size (convnets): open_clip
    # builds the trunk at its default size, so size-bound timm ViTs would not reload.
    timm_model: str | None = None
    timm_pool: str = "avg"  # timm: pooling before the projection ("" = model's own head)
    # timm: projection to the embedding: "" = the network's own classifier head resized to
    # embed_dim (works for every timm convnet), or "linear"/"mlp" on the pooled trunk features
    timm_proj: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise ConfigError(f"vision.kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.image_size <= 0:
            raise ConfigError(f"vision.image_size must be positive, got {self.image_size}")
        if self.kind == "vit":
            missing = [n for n in ("layers", "width", "heads", "mlp_ratio", "patch_size") if getattr(self, n) is None]
            if missing:
                raise ConfigError(f"a ViT image tower needs {', '.join(missing)}")
            if self.width % self.heads:
                raise ConfigError(f"vision.width {self.width} is not divisible by vision.heads {self.heads}")
            if self.image_size % self.patch_size:
                raise ConfigError(
                    f"vision.image_size {self.image_size} is not divisible by vision.patch_size {self.patch_size}")
        elif not self.timm_model:
            raise ConfigError("a timm image tower needs timm_model")


@dataclass(frozen=True)
class TextTowerConfig:
    """Text tower: the teacher's frozen one, or a student transformer."""

    kind: str = "teacher"  # "teacher" (reuse the frozen teacher tower, as DIME-FM does) or "transformer"
    layers: int | None = None  # transformer blocks
    width: int | None = None  # token width
    heads: int | None = None  # attention heads
    context_length: int | None = None  # tokens per sentence
    mlp_ratio: float = 4.0  # MLP hidden size / width
    vocab_size: int = VOCAB_SIZE  # the teacher's tokenizer vocabulary (text towers share it)

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ConfigError(f"text.kind must be one of {TEXT_KINDS}, got {self.kind!r}")
        if self.kind == "transformer":
            missing = [n for n in ("layers", "width", "heads", "context_length") if getattr(self, n) is None]
            if missing:
                raise ConfigError(f"a transformer text tower needs {', '.join(missing)}")
            if self.width % self.heads:
                raise ConfigError(f"text.width {self.width} is not divisible by text.heads {self.heads}")


@dataclass(frozen=True)
class StudentConfig:
    """A complete student architecture. ``embed_dim`` equals the teacher's."""

    embed_dim: int
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)

    # ---- JSON round-trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict with only the fields that matter for this architecture."""
        return {
            "embed_dim": self.embed_dim,
            "vision": _active_fields(self.vision),
            "text": _active_fields(self.text),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        unknown = set(data) - {"embed_dim", "vision", "text"}
        if unknown:
            raise ConfigError(f"unknown StudentConfig key(s): {', '.join(sorted(unknown))}")
        if "embed_dim" not in data:
            raise ConfigError("StudentConfig needs embed_dim")
        return cls(
            embed_dim=int(data["embed_dim"]),
            vision=_build_dataclass(VisionTowerConfig, data.get("vision", {}), "vision"),
            text=_build_dataclass(TextTowerConfig, data.get("text", {}), "text"),
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> StudentConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> StudentConfig:
        """Read a StudentConfig JSON file (or a model card holding one under "student")."""
        data = json.loads(Path(path).read_text())
        if "student" in data and isinstance(data["student"], dict):
            data = data["student"]
        return cls.from_dict(data)

    # ---- identity --------------------------------------------------------------------
    @property
    def arch_key(self) -> str:
        """Stable 12-hex-digit key: same architecture => same key in any process."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """Short human-readable summary, e.g. ``vit L4 W128 H4 p8 @32px + text=teacher``."""
        v, t = self.vision, self.text
        if v.kind == "vit":
            img = f"vit L{v.layers} W{v.width} H{v.heads} mlp{v.mlp_ratio:g} p{v.patch_size} @{v.image_size}px"
        else:
            img = f"timm {v.timm_model} @{v.image_size}px"
        txt = "text=teacher" if t.kind == "teacher" else f"text L{t.layers} W{t.width} H{t.heads} ctx{t.context_length}"
        return f"{img} + {txt}"

    # ---- open_clip model config --------------------------------------------------------
    def open_clip_config(self, teacher_text_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """The open_clip model-config dict (the ``model_configs/*.json`` format).

        A student that reuses the teacher's text tower needs that tower's config
        (``teacher_text_cfg``) to describe a complete CLIP model.
        """
        return {"embed_dim": self.embed_dim, "vision_cfg": self.vision_cfg(), "text_cfg": self.text_cfg(teacher_text_cfg)}

    def vision_cfg(self) -> dict[str, Any]:
        v = self.vision
        if v.kind == "vit":
            return {
                "image_size": v.image_size,
                "layers": v.layers,
                "width": v.width,
                "head_width": v.width // v.heads,
                "mlp_ratio": v.mlp_ratio,
                "patch_size": v.patch_size,
            }
        return {
            "image_size": v.image_size,
            "timm_model_name": v.timm_model,
            "timm_model_pretrained": False,
            "timm_pool": v.timm_pool,
            "timm_proj": v.timm_proj,
        }

    def text_cfg(self, teacher_text_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        t = self.text
        if t.kind == "teacher":
            if teacher_text_cfg is None:
                raise ValueError("this student reuses the teacher's text tower: pass the teacher's text_cfg")
            return dict(teacher_text_cfg)
        return {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
        }


def _active_fields(obj: Any) -> dict[str, Any]:
    """Fields of a tower config, dropping those unset (None) so keys ignore unused dims."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = float(value)
        out[f.name] = value
    if out.get("kind") == "vit":
        out.pop("timm_pool", None)
        out.pop("timm_proj", None)
    if out.get("kind") == "teacher":
        out = {"kind": "teacher"}
    return out


def _build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {where} key(s): {', '.join(sorted(unknown))}")
    kwargs = dict(data)
    for name in ("mlp_ratio",):
        if kwargs.get(name) is not None:
            kwargs[name] = float(kwargs[name])
    return cls(**kwargs)


# ---- builders ---------------------------------------------------------------------------
# The towers are built from open_clip's public classes with the arguments its CLIP passes
# for a float32 model without QuickGELU, so a student tower is the tower of the CLIP that
# ``build_student`` (and ``open_clip.create_model`` on the exported config) builds.
_VIT_ARGS = ("image_size", "patch_size", "width", "layers", "mlp_ratio", "ls_init_value", "patch_dropout",
             "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "pos_embed_type", "no_ln_pre",
             "final_ln_after_pool", "pool_type", "output_tokens", "block_type", "qk_norm", "scaled_cosine_attn",
             "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
_TEXT_ARGS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "embed_cls",
              "no_causal_mask", "pad_id", "eos_id", "pool_type", "proj_type", "proj_bias", "output_tokens",
              "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn",
              "scale_fc")


def build_image_tower(config: StudentConfig):
    """The student's image tower alone (what a search trial trains): images -> (B, embed_dim)."""
    from open_clip.model import CLIPVisionCfg

    cfg = CLIPVisionCfg(**config.vision_cfg())
    if config.vision.kind == "timm":
        from open_clip.timm_model import TimmModel

        return TimmModel(cfg.timm_model_name, embed_dim=config.embed_dim, image_size=cfg.image_size,
                         pool=cfg.timm_pool, proj=cfg.timm_proj, proj_bias=cfg.timm_proj_bias, drop=cfg.timm_drop,
                         drop_path=cfg.timm_drop_path, patch_drop=cfg.patch_dropout or None,
                         pretrained=cfg.timm_model_pretrained)
    from open_clip.transformer import LayerNorm, VisionTransformer
    from torch import nn

    return VisionTransformer(**{k: getattr(cfg, k) for k in _VIT_ARGS}, heads=cfg.width // cfg.head_width,
                             output_dim=config.embed_dim, act_layer=nn.GELU, norm_layer=LayerNorm)


def build_text_tower(config: StudentConfig):
    """The student's own text tower (tokens -> (B, embed_dim)); only for kind 'transformer'."""
    from open_clip.model import CLIPTextCfg
    from open_clip.transformer import LayerNorm, TextTransformer
    from torch import nn

    if config.text.kind != "transformer":
        raise ValueError("this student reuses the teacher's text tower; it has no text tower of its own")
    cfg = CLIPTextCfg(**config.text_cfg())
    return TextTransformer(**{k: getattr(cfg, k) for k in _TEXT_ARGS}, output_dim=config.embed_dim,
                           act_layer=nn.GELU, norm_layer=LayerNorm)


def build_student(config: StudentConfig, teacher_text_cfg: dict[str, Any] | None = None):
    """A complete open_clip ``CLIP`` model for this student (random init).

    For ``text: teacher`` the text tower is built from ``teacher_text_cfg`` (its weights
    are copied from the teacher at export time).
    """
    return build_clip(config.open_clip_config(teacher_text_cfg))


def build_clip(model_cfg: dict[str, Any]):
    """An ``open_clip.model.CLIP`` (random init) from an open_clip model-config dict."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(embed_dim=model_cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**model_cfg["vision_cfg"]),
                text_cfg=CLIPTextCfg(**model_cfg["text_cfg"]), quick_gelu=model_cfg.get("quick_gelu", False))


def write_open_clip_config(config: StudentConfig, path: str | Path,
                           teacher_text_cfg: dict[str, Any] | None = None) -> Path:
    """Write the open_clip model-config JSON (loadable via ``open_clip.add_model_config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.open_clip_config(teacher_text_cfg), indent=2) + "\n")
    return path
