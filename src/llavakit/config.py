"""Model configuration as small dataclasses, with JSON/YAML round trips.

A `LlavaConfig` is three parts (vision tower, projector, language model) plus the few settings
that join them. Every loader in `checkpoints/` turns a foreign config into one of these, so the
model code never looks at anything but these fields.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FORMAT_NAME = "llavakit"
FORMAT_VERSION = 1


@dataclass
class VisionConfig:
    """A ViT image encoder: CLIP (class token, pre-norm) or SigLIP (no class token)."""

    kind: str = "clip"  # "clip" | "siglip"
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.kind not in ("clip", "siglip"):
            raise ValueError(f"vision kind must be 'clip' or 'siglip', got {self.kind!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def has_class_token(self) -> bool:
        return self.kind == "clip"


_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


@dataclass
class ProjectorConfig:
    """Maps vision features to the LLM width: `linear`, `mlpNx_gelu` (N linears) or `identity`."""

    type: str = "mlp2x_gelu"
    bias: bool = True

    def __post_init__(self) -> None:
        if self.type not in ("linear", "identity") and not _MLP_GELU.match(self.type):
            raise ValueError(
                f"unknown projector type {self.type!r}; use 'linear', 'identity' or 'mlpNx_gelu' "
                "(e.g. 'mlp2x_gelu')"
            )

    @property
    def depth(self) -> int:
        """Number of linear layers (0 for identity)."""
        if self.type == "identity":
            return 0
        if self.type == "linear":
            return 1
        return int(_MLP_GELU.match(self.type).group(1))


@dataclass
class LanguageConfig:
    """A Llama-family decoder (Llama, Vicuna, Mistral, Qwen2 with q/k/v bias)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # bias on q/k/v (Qwen2, and Llama with attention_bias)
    attention_out_bias: bool = False  # bias on o_proj too (Llama with attention_bias)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)


@dataclass
class LlavaConfig:
    """The whole model, plus how images and prompts are prepared for it."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    # Id written into the prompt at every image-feature position. It may lie outside the
    # vocabulary (the original LLaVA uses -200): those positions are never embedded.
    image_token_id: int = -200
    vision_feature_layer: int = -2  # hidden state taken from the tower (-2: second to last)
    vision_feature_select: str = "patch"  # "patch" drops the class token, "cls_patch" keeps it
    image_aspect: str = "pad"  # how images are made square: "pad" | "square" | "resize" | "anyres"
    image_grid_pinpoints: list[list[int]] | None = None
    template: str = "vicuna_v1"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.projector, dict):
            self.projector = ProjectorConfig(**self.projector)
        if isinstance(self.language, dict):
            self.language = LanguageConfig(**self.language)
        if self.vision_feature_select not in ("patch", "cls_patch"):
            raise ValueError(
                f"vision_feature_select must be 'patch' or 'cls_patch', got {self.vision_feature_select!r}"
            )
        if self.vision_feature_select == "cls_patch" and not self.vision.has_class_token:
            raise ValueError("vision_feature_select 'cls_patch' needs a tower with a class token (CLIP)")
        if not -self.vision.num_layers - 1 <= self.vision_feature_layer <= self.vision.num_layers:
            raise ValueError(
                f"vision_feature_layer {self.vision_feature_layer} is outside the tower's "
                f"{self.vision.num_layers} layers"
            )

    @property
    def tokens_per_image(self) -> int:
        """Feature positions one (non-anyres) image occupies in the prompt."""
        extra = 1 if self.vision_feature_select == "cls_patch" else 0
        return self.vision.num_patches + extra

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlavaConfig:
        d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LlavaConfig fields: {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LlavaConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
