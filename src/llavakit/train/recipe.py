"""Training recipes: nested dataclasses read from YAML, with `key=value` overrides.

A recipe is a packaged name (`llava-v1.5-7b-pretrain`, see `llavakit/recipes/`) or a YAML
path. `base: OTHER` inherits another recipe and overrides it field by field. Values are
coerced to the declared field types, so `train.lr=2e-5` on the command line is a float even
though YAML 1.1 reads `2e-5` as a string. Unknown keys are errors with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RecipeError(ValueError):
    """A recipe that cannot be read or does not make sense; the message says which field."""


@dataclass
class ModelSpec:
    init: str | None = None  # a LLaVA checkpoint (llavakit, llava-hf, original): folder or hub id
    language_model: str | None = None  # or a base LLM (HF Llama folder / hub id) ...
    vision_tower: str | None = None  # ... plus a CLIP/SigLIP tower ...
    projector: str = "mlp2x_gelu"  # ... plus a fresh projector of this type
    projector_from: str | None = None  # a stage-1 output folder or projector file
    vision_feature_layer: int = -2
    image_aspect: str = "pad"
    template: str = "vicuna_v1"


@dataclass
class DataSpec:
    path: str | None = None  # LLaVA JSON or JSONL
    image_folder: str | None = None
    max_length: int = 2048
    overlong: str = "truncate"  # "truncate" (when no image slot is cut) | "skip"
    group_by_modality_length: bool = False
    # Records sorted by length together when grouping (a multiple of the global batch; null:
    # one global batch), the original LLaVA sampler's "megabatch".
    length_group_size: int | None = None
    length_estimate: str = "tokens"  # "tokens" (tokenize once) | "words" (the original's estimate)
    num_workers: int = 2
    num_records: int | None = None  # used by --dry-run when the data file is not at hand


@dataclass
class TrainSpec:
    trainable: list[str] = field(default_factory=lambda: ["projector"])  # + language_model, vision_tower
    epochs: int = 1
    max_steps: int | None = None
    global_batch_size: int = 128
    micro_batch_size: int = 16  # per device; accumulation = global / (micro * world)
    lr: float = 2e-5
    projector_lr: float | None = None
    vision_tower_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    seed: int = 42
    precision: str = "bf16"  # bf16 (autocast; frozen weights stored in bf16) | fp32
    gradient_checkpointing: bool = True
    device: str = "auto"


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLM_TARGETS))
    quantize: str | None = None  # "4bit": QLoRA (CUDA + bitsandbytes)


@dataclass
class CacheSpec:
    features: bool = False  # cache the frozen tower's features on disk
    dir: str | None = None  # default: OUTPUT/feature_cache
    dtype: str = "float16"  # float16 | float32
    batch_size: int = 32


@dataclass
class OutputSpec:
    dir: str | None = None
    save_every: int = 0  # steps between resumable checkpoints (0: none)
    keep_last: int = 2
    log_every: int = 1
    progress: bool = True


@dataclass
class DistributedSpec:
    strategy: str = "auto"  # auto (ddp below 1B parameters, else fsdp) | ddp | fsdp
    backend: str = "auto"  # nccl on CUDA, gloo on CPU


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        t = self.train
        known = {"projector", "language_model", "vision_tower"}
        if not t.trainable or set(t.trainable) - known:
            raise RecipeError(f"train.trainable must be a non-empty subset of {sorted(known)}, got {t.trainable}")
        choices = {
            "train.schedule": (t.schedule, ("cosine", "linear", "constant")),
            "train.precision": (t.precision, ("bf16", "fp32")),
            "data.overlong": (self.data.overlong, ("truncate", "skip")),
            "data.length_estimate": (self.data.length_estimate, ("tokens", "words")),
            "cache.dtype": (self.cache.dtype, ("float16", "float32")),
            "distributed.strategy": (self.distributed.strategy, ("auto", "ddp", "fsdp")),
            "lora.quantize": (self.lora.quantize, (None, "4bit")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise RecipeError(f"{key} must be one of {allowed}, got {value!r}")
        if self.cache.features and "vision_tower" in t.trainable:
            raise RecipeError("cache.features needs a frozen vision tower (remove vision_tower from train.trainable)")
        if self.model.init is None and not (self.model.language_model and self.model.vision_tower):
            raise RecipeError("set model.init (a LLaVA checkpoint) or both model.language_model and model.vision_tower")
        if t.global_batch_size < 1 or t.micro_batch_size < 1:
            raise RecipeError("train.global_batch_size and train.micro_batch_size must be positive")
        group = self.data.length_group_size
        if group is not None and (group < 1 or group % t.global_batch_size):
            raise RecipeError(f"data.length_group_size {group} must be a positive multiple of "
                              f"train.global_batch_size {t.global_batch_size} (or null for one global batch)")
        if group is not None and not self.data.group_by_modality_length:
            raise RecipeError("data.length_group_size only applies when data.group_by_modality_length is true; "
                              "set that too, or leave data.length_group_size null")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps so that micro * accumulation * world == global batch."""
        per_step = self.train.micro_batch_size * world_size
        if self.train.global_batch_size % per_step:
            raise RecipeError(
                f"train.global_batch_size {self.train.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.train.micro_batch_size} x {world_size} process(es); change one of them"
            )
        return self.train.global_batch_size // per_step


def packaged_recipes() -> list[str]:
    folder = resources.files("llavakit") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(reference: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw dict of a recipe, with `base:` inheritance resolved."""
    path = Path(reference).expanduser()
    if path.is_file():
        text = path.read_text()
    else:
        packaged = resources.files("llavakit") / "recipes" / f"{reference}.yaml"
        if not packaged.is_file():
            raise RecipeError(
                f"no recipe file {reference!r} and no packaged recipe of that name; packaged: "
                + ", ".join(packaged_recipes())
            )
        text = packaged.read_text()
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{reference}: invalid YAML: {err}") from err
    if not isinstance(d, dict):
        raise RecipeError(f"{reference}: a recipe is a YAML mapping")
    base = d.pop("base", None)
    if base:
        if base in seen:
            raise RecipeError(f"recipe inheritance loops through {base!r}")
        if not Path(base).is_absolute() and path.is_file() and (path.parent / base).is_file():
            base = str(path.parent / base)  # a relative base is relative to the recipe file
        d = deep_merge(_read_yaml(base, (*seen, reference)), d)
    return d


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs (value parsed as YAML) set into a nested dict."""
    d = dict(d)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not key=value (e.g. train.lr=2e-5)")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = d
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return d


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))
        if is_null and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise RecipeError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in items]
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where} must be of type {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise RecipeError(f"{where or 'recipe'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise RecipeError(f"unknown recipe key {path!r}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value or {}, path)
        else:
            kwargs[key] = _coerce(value, hint_type, path)
    return cls(**kwargs)


def load_recipe(reference: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A validated recipe from a packaged name or YAML path, with `key=value` overrides applied."""
    d = apply_overrides(_read_yaml(str(reference)), list(overrides or []))
    recipe = _build(Recipe, d, "")
    recipe.validate()
    return recipe
