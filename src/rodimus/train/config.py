"""Training configuration: one dataclass, presets, config files (JSON or TOML) and key=value overrides."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Model shapes. `tiny` is tuned for a 2-core CPU (README main command, ~10 minutes); the others follow the
# usual 130M/350M/760M/1.3B ladder (d_model 768/1024/1536/2048). A Rodimus block is the mixer alone, so the
# pure-Rodimus sizes use twice the layers of Rodimus+ (whose blocks add SW-SKA and a SwiGLU FFN).
# Parameter counts depend on the vocabulary (from the tokenizer); `rodimus train --list-presets` prints them.
_MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_type="rodimus", d_model=192, n_layer=3, mixer_cfg=dict(mem_size=32)),
    "tiny-plus": dict(
        block_type="rodimus_plus",
        d_model=192,
        n_layer=2,
        mixer_cfg=dict(mem_size=32),
        attn_cfg=dict(num_heads=4, window_size=128),
    ),
}
_SIZES = {"130m": (768, 20, 10), "350m": (1024, 40, 20), "760m": (1536, 44, 21), "1.3b": (2048, 44, 21)}
for _name, (_d, _l_rod, _l_plus) in _SIZES.items():
    _MODEL_PRESETS[f"rodimus-{_name}"] = dict(
        block_type="rodimus", d_model=_d, n_layer=_l_rod, mixer_cfg=dict(mem_size=64)
    )
    _MODEL_PRESETS[f"rodimus-plus-{_name}"] = dict(
        block_type="rodimus_plus",
        d_model=_d,
        n_layer=_l_plus,
        mixer_cfg=dict(mem_size=64),
        attn_cfg=dict(num_heads=_d // 128, window_size=1024),
    )

# Training settings that differ from the dataclass defaults, per preset family.
# The tiny presets use one thread: on 2 shared cores, two OpenMP threads stall each other as soon as
# anything else runs (measured ~10x slower per step under load); `--set num_threads=0` restores the default.
_TINY_TRAIN = dict(
    seq_len=256,
    micro_batch=8,
    max_steps=600,
    lr=3e-3,
    warmup_steps=30,
    eval_every=100,
    ckpt_every=100,
    vocab_size=4096,
    num_threads=1,
)
_TRAIN_PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY_TRAIN, "tiny-plus": _TINY_TRAIN}
_BIG_TRAIN = dict(
    seq_len=2048,
    micro_batch=8,
    max_steps=20000,
    lr=1.5e-3,
    warmup_steps=1000,
    eval_every=1000,
    ckpt_every=1000,
    vocab_size=32000,
)

PRESETS = sorted(_MODEL_PRESETS)


@dataclass
class TrainConfig:
    """Everything a run needs; saved as train_config.json in --out so a resume uses the same settings."""

    preset: str = "tiny"  # name the model shape and defaults came from
    model: dict[str, Any] = field(default_factory=dict)  # RodimusConfig keyword arguments (vocab set from data)
    data: list[str] = field(default_factory=list)  # prepared folder, or raw inputs; empty = stdlib corpus
    tokenizer: str | None = None  # tokenizer to use when preparing raw inputs (None = train a BPE)
    vocab_size: int = 8192  # BPE vocabulary when a tokenizer is trained while preparing
    out: str = "runs/tiny"  # run folder: checkpoints, metrics.jsonl, loss.png, final/
    seed: int = 0  # model init and data order
    seq_len: int = 256  # tokens per training window
    micro_batch: int = 8  # windows per forward pass per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 300  # optimizer steps in total
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_steps: int = 30  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decay (never on biases, norms, residual_weight, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    eval_every: int = 100  # validate every N steps (and at the end)
    eval_windows: int = 64  # validation windows (seq_len tokens each) per evaluation
    ckpt_every: int = 100  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted
    log_every: int = 1  # write a metrics.jsonl row every N steps
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    activation_checkpointing: bool = False  # recompute blocks in backward to save memory
    fused_loss: bool = True  # models that accept skip_logits: loss in row chunks, no [B, T, vocab] logits
    parallel: str = "auto"  # auto (DDP when distributed) | ddp | fsdp | none
    compile: bool = False  # torch.compile the model
    cuda_graphs: bool = False  # replay each micro-batch's forward+backward as CUDA graphs (one GPU)
    cuda_graph_max_docs: int = 64  # packed documents per micro-batch the graphs hold (more run eagerly)
    sample_tokens: int = 48  # tokens generated at the end (0 = skip)
    sample_prompt: str = "def "  # prompt of that sample
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)

    def validate(self) -> None:
        def need(cond: bool, name: str, allowed: str) -> None:
            if not cond:
                raise ValueError(f"train config: {name} must be {allowed}, got {getattr(self, name)!r}")

        for name in (
            "seq_len",
            "micro_batch",
            "grad_accum",
            "max_steps",
            "eval_every",
            "eval_windows",
            "ckpt_every",
            "keep_checkpoints",
            "log_every",
            "cuda_graph_max_docs",
        ):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an int >= 1")
        need(self.seq_len >= 2, "seq_len", ">= 2")
        need(self.lr > 0, "lr", "> 0")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "in [0, 1) (beta2 too)")
        need(self.grad_clip >= 0, "grad_clip", ">= 0")
        need(self.precision in ("auto", "bf16", "fp32"), "precision", "one of auto, bf16, fp32")
        need(self.parallel in ("auto", "ddp", "fsdp", "none"), "parallel", "one of auto, ddp, fsdp, none")
        need(self.num_threads >= 0, "num_threads", ">= 0")
        need(self.sample_tokens >= 0, "sample_tokens", ">= 0")
        need(self.preset in _MODEL_PRESETS or bool(self.model), "preset", f"one of {PRESETS}")


# Settings that may change when resuming a run; everything else must match the saved config.
RESUMABLE_OVERRIDES = frozenset(
    {
        "max_steps",
        "eval_every",
        "ckpt_every",
        "log_every",
        "keep_checkpoints",
        "sample_tokens",
        "sample_prompt",
        "num_threads",
        "compile",
        "cuda_graphs",
        "cuda_graph_max_docs",
    }
)


def preset_config(name: str) -> TrainConfig:
    if name not in _MODEL_PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    train = _TRAIN_PRESETS.get(name, _BIG_TRAIN)
    return TrainConfig(preset=name, model=copy.deepcopy(_MODEL_PRESETS[name]), **train)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file holding TrainConfig fields (a `model` table holds RodimusConfig fields)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config: file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as e:
        raise ValueError(f"config: could not parse {p}: {e}") from e


def set_field(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set a field, or a nested model field with a `model.` prefix."""
    names = {f.name for f in fields(TrainConfig)}
    if key.startswith("model."):
        target = cfg.model
        parts = key.split(".")[1:]
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        return
    if key not in names:
        raise ValueError(f"config: unknown field {key!r}; known: {sorted(names)} and model.<field>")
    if key == "model":
        cfg.model.update(value)
    else:
        setattr(cfg, key, value)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings (values parsed as JSON when possible) -> dict."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def build_config(preset: str | None, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset defaults, then the config file, then explicit command-line values."""
    file_values = load_config_file(config_file) if config_file else {}
    name = overrides.get("preset") or file_values.get("preset") or preset or "tiny"
    cfg = preset_config(name) if name in _MODEL_PRESETS else TrainConfig(preset=name)
    for k, v in {**file_values, **overrides}.items():
        if k != "preset":
            set_field(cfg, k, v)
    cfg.validate()
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(d: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in d.items() if k in names})
    cfg.validate()
    return cfg
