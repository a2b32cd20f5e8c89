"""TrainConfig: every setting of one training run, from a config file plus flags.

Framework-neutral (imports neither torch nor mindspore) so the PyTorch trainer, the
MindSpore trainer and `evaluate` share one definition. Precedence: dataclass defaults <
config file (`--config`, YAML, keys are field names) < command-line flags.
The frozen dataclass is stored inside every checkpoint (`dataclasses.asdict`), so a
checkpoint says how it was made.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kjob_trainer.common.augment import AUTO_AUGMENT_POLICIES
from kjob_trainer.common.errors import BadInput

FRAMEWORKS = ("pytorch", "mindspore")
MODELS = ("resnext50_32x4d", "resnest50")
AMP_MODES = ("off", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "step")
DEVICES = ("auto", "cpu", "gpu")
DECODERS = ("torchvision", "pil", "dali")  # PyTorch only; MindSpore decodes with mindspore.dataset
# MindSpore AMP levels as MindCV names them; None lets the MindSpore trainer derive one from `amp`.
MS_AMP_LEVELS = ("O0", "O1", "O2", "O3")

# The shipped recipes stay at the package's top (kjob_trainer/configs/, the path the spec
# reference and the docs give users), one level above this module.
CONFIG_DIR = Path(__file__).parents[1] / "configs"


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings. Validated by `validate`; see README section `trainer` for each."""

    framework: str = "pytorch"
    model: str = "resnext50_32x4d"
    data_path: str | None = None
    output_path: str = "./output"
    epochs: int = 90
    batch_size: int = 32  # per process
    lr: float = 0.1  # for a global batch of 256; scaled linearly by global batch / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Decay BN weights and biases too (torchvision's default); False = only conv/linear weights.
    bn_bias_decay: bool = True
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01  # lr at step 0 = factor x base lr, rising linearly
    label_smoothing: float = 0.0
    lr_schedule: str = "cosine"
    lr_milestones: tuple[int, ...] = (30, 60, 80)  # epochs, for lr_schedule=step
    lr_gamma: float = 0.1
    min_lr: float = 0.0
    amp: str = "off"
    channels_last: bool = True
    compile: bool = False
    grad_accum: int = 1
    ckpt_interval: int = 1  # epochs
    ckpt_steps: int = 0  # also save every N optimizer steps (0 = off), for long epochs
    keep_checkpoints: int = 3
    resume: str = "auto"  # auto | never | PATH
    image_size: int = 224
    eval_resize: int | None = None  # None: image_size * 256 / 224, the usual ratio
    hflip: bool = True  # random horizontal flip in training (off for data where mirroring changes meaning)
    crop_scale_min: float = 0.08  # smallest area fraction of the random-resized crop (Inception's 8%)
    # Recipe augmentations after crop and flip (see augment.py): brightness/contrast/saturation
    # jitter strength (the MindSpore zoo's 0.4), an AutoAugment policy (PaddleClas: imagenet),
    # and Mixup's Beta(alpha, alpha) (PaddleClas: 0.2); 0 / None = off.
    color_jitter: float = 0.0
    auto_augment: str | None = None
    mixup_alpha: float = 0.0
    eval_resize_square: bool = False  # eval: resize to eval_resize x eval_resize (the MindSpore zoo) instead of the short side
    workers: int = 4  # loader processes per rank
    synthetic: bool = False
    synthetic_samples: int = 1281167  # images per epoch of synthetic data (ImageNet's count)
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    eval: bool = True
    num_classes: int | None = None  # None: from the dataset (1000 for synthetic data)
    log_interval: int = 20  # steps between progress lines (and loss/accuracy reductions)
    dist_timeout: float = 300.0  # seconds a rank waits to join before failing
    # Corrupt images are skipped (replaced by another sample) and counted; the run fails
    # once the count exceeds this fraction of the training set.
    max_bad_images: float = 0.0001
    decoder: str = "torchvision"  # PyTorch image decoder: torchvision | pil | dali (see data.build_transforms)
    bucket_cap_mb: int = 25  # DDP gradient bucket size
    # MindSpore-only knobs, kept here so one config file serves both frameworks.
    amp_level: str | None = None
    loss_scale: float = 1024.0
    loss_scale_type: str = "fixed"  # fixed | dynamic
    dataset_sink: bool = True  # MindCV's key; sink mode is not implemented (the trainer says so on GPU/Ascend)
    config_file: str | None = None  # where the config came from (informational)

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step across all ranks."""
        return self.batch_size * self.grad_accum * world_size

    def scaled_lr(self, world_size: int) -> float:
        """The base lr after linear scaling by global batch / 256."""
        return self.lr * self.global_batch(world_size) / 256.0

    def eval_resize_size(self) -> int:
        return self.eval_resize or max(self.image_size, round(self.image_size * 256 / 224))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """The Python types a field accepts, from its (string) annotation."""
    hint = typing.get_type_hints(TrainConfig)[annotation]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def _coerce(name: str, value: Any, source: str) -> Any:
    allowed = _allowed_types(name)
    if value is None and type(None) in allowed:
        return None
    if tuple in allowed and isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise BadInput(f"{source}: {name} must be a list of integers, got {value!r}")
        return tuple(value)
    if bool in allowed:
        if isinstance(value, bool):
            return value
    elif int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif str in allowed and isinstance(value, str):
        return value
    wanted = "/".join(t.__name__ for t in allowed if t is not type(None))
    raise BadInput(f"{source}: {name} must be {wanted}, got {value!r}")


def read_config_file(path: str) -> dict[str, Any]:
    """Keys of a YAML config file. A bare name (e.g. `resnext50_torchvision`) is looked up
    in kjob_trainer/configs/. Raises BadInput for a missing/unparsable file or unknown key."""
    import yaml

    p = Path(path)
    if not p.exists() and not p.suffix and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"config file {path}: cannot read it ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BadInput(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise BadInput(f"config file {path}: expected a mapping of settings at the top level")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS or name == "config_file":
            raise BadInput(f"config file {path}: unknown key {key!r}")
        out[name] = _coerce(name, value, f"config file {path}")
    out["config_file"] = str(p)
    return out


def make_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < config file < overrides (flag values), validated.

    Raises BadInput naming the first bad setting."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_config_file(config_file))
    for name, value in (overrides or {}).items():
        if name not in FIELDS:
            raise BadInput(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, "flag --" + name.replace("_", "-"))
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BadInput(message)


def validate(cfg: TrainConfig) -> None:
    """Raises BadInput for the first setting out of range."""
    _check(cfg.framework in FRAMEWORKS, f"unknown framework {cfg.framework!r} (choose from {', '.join(FRAMEWORKS)})")
    _check(cfg.model in MODELS, f"unknown model {cfg.model!r} (choose from {', '.join(MODELS)})")
    _check(cfg.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    _check(cfg.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
    _check(cfg.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    _check(cfg.decoder in DECODERS, f"--decoder must be one of {', '.join(DECODERS)}, got {cfg.decoder!r}")
    _check(cfg.amp_level is None or cfg.amp_level in MS_AMP_LEVELS, f"amp_level must be one of {', '.join(MS_AMP_LEVELS)}")
    _check(cfg.loss_scale_type in ("fixed", "dynamic"), "loss_scale_type must be fixed or dynamic")
    for name in ("epochs", "batch_size", "grad_accum", "ckpt_interval", "keep_checkpoints", "log_interval", "bucket_cap_mb"):
        _check(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    _check(cfg.image_size >= 8, f"--image-size must be at least 8, got {cfg.image_size}")
    _check(cfg.workers >= 0 and cfg.ckpt_steps >= 0 and cfg.seed >= 0, "--workers, --ckpt-steps and --seed must not be negative")
    _check(cfg.max_steps is None or cfg.max_steps >= 1, f"--max-steps must be at least 1, got {cfg.max_steps}")
    _check(cfg.num_classes is None or cfg.num_classes >= 2, f"--num-classes must be at least 2, got {cfg.num_classes}")
    _check(cfg.synthetic_samples >= 1, "--synthetic-samples must be at least 1")
    _check(cfg.lr > 0 and cfg.momentum >= 0 and cfg.weight_decay >= 0, "--lr must be positive; --momentum and --weight-decay not negative")
    _check(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(cfg.warmup_epochs >= 0 and cfg.dist_timeout > 0, "--warmup-epochs must not be negative; --dist-timeout must be positive")
    _check(0 < cfg.crop_scale_min <= 1, f"--crop-scale-min must be in (0, 1], got {cfg.crop_scale_min}")
    _check(0 <= cfg.max_bad_images < 1, "--max-bad-images is a fraction in [0, 1)")
    _check(cfg.auto_augment is None or cfg.auto_augment in AUTO_AUGMENT_POLICIES,
           f"--auto-augment must be one of {', '.join(AUTO_AUGMENT_POLICIES)}, got {cfg.auto_augment!r}")
    _check(cfg.mixup_alpha >= 0 and cfg.color_jitter >= 0, "--mixup-alpha and --color-jitter must not be negative")
    _check(cfg.synthetic or bool(cfg.data_path), "no dataset: give --data-path DIR or --synthetic")
    _check(bool(cfg.resume), "--resume must be auto, never or a checkpoint path")
