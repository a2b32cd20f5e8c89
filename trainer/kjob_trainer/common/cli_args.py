"""The trainer's command line, with the reference trainers' spellings as aliases.

Framework-neutral. Only flags given on the command line override the config file
(argparse.SUPPRESS keeps absent ones out of the namespace).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from kjob_trainer.common.augment import AUTO_AUGMENT_POLICIES
from kjob_trainer.common.config import AMP_MODES, DEVICES, FRAMEWORKS, LR_SCHEDULES, MODELS
from kjob_trainer.common.errors import BadInput

S = argparse.SUPPRESS
# The MindSpore model zoo's --device_target values.
DEVICE_TARGETS = {"GPU": "gpu", "CPU": "cpu", "gpu": "gpu", "cpu": "cpu"}


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises BadInput (one line, exit 2) instead of printing usage."""

    def error(self, message: str):
        raise BadInput(f"{self.prog}: {message}")


def _parser(prog: str) -> OneLineParser:
    p = OneLineParser(prog=prog, argument_default=S, allow_abbrev=False,
                      description="Train ResNeXt50_32x4d / ResNeSt50 (PyTorch or MindSpore); one process per device.")
    a = p.add_argument
    a("--config", "-c", dest="config_file", metavar="FILE", help="YAML config (a file, or a name in kjob_trainer/configs/)")
    a("--framework", choices=FRAMEWORKS)
    a("--model", "--arch", "-a", choices=MODELS, metavar="{" + ",".join(MODELS) + "}")
    a("--data-path", "--data_path", "--data-dir", "--data_dir", "--data", dest="data_path", metavar="DIR")
    a("--output-path", "--output_path", "--output-dir", "--output_dir", dest="output_path", metavar="DIR")
    a("--epochs", "--epoch", type=int, metavar="N")
    a("--batch-size", "--batch_size", "-b", dest="batch_size", type=int, metavar="N", help="per process")
    a("--lr", "--learning-rate", type=float, metavar="F", help="for a global batch of 256 (scaled linearly)")
    a("--momentum", type=float, metavar="F")
    a("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", type=float, metavar="F")
    a("--no-bn-bias-decay", dest="bn_bias_decay", action="store_false", help="no weight decay on BN weights and biases")
    a("--warmup-epochs", "--warmup_epochs", dest="warmup_epochs", type=float, metavar="F")
    a("--label-smoothing", "--label_smoothing", dest="label_smoothing", type=float, metavar="F")
    a("--lr-schedule", "--lr_scheduler", dest="lr_schedule", choices=LR_SCHEDULES)
    a("--lr-milestones", dest="lr_milestones", type=int, nargs="+", metavar="EPOCH")
    a("--lr-gamma", dest="lr_gamma", type=float, metavar="F")
    a("--min-lr", dest="min_lr", type=float, metavar="F")
    a("--amp", nargs="?", const="bf16", choices=AMP_MODES, help="mixed precision; bare --amp means bf16")
    a("--amp-level", "--amp_level", dest="amp_level", choices=("O0", "O1", "O2", "O3"), help="MindSpore AMP level")
    a("--loss-scale", "--loss_scale", dest="loss_scale", type=float, metavar="F", help="MindSpore fixed loss scale")
    a("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction)
    a("--compile", action=argparse.BooleanOptionalAction)
    a("--grad-accum", dest="grad_accum", type=int, metavar="N")
    a("--ckpt-interval", "--ckpt_interval", dest="ckpt_interval", type=int, metavar="EPOCHS")
    a("--ckpt-steps", dest="ckpt_steps", type=int, metavar="N", help="also checkpoint every N steps")
    a("--keep-checkpoints", "--keep_checkpoint_max", dest="keep_checkpoints", type=int, metavar="N")
    a("--resume", "--checkpoint_file_path", dest="resume", metavar="{auto,never,PATH}")
    a("--image-size", "--image_size", dest="image_size", type=int, metavar="N")
    a("--hflip", dest="hflip", action=argparse.BooleanOptionalAction, help="random horizontal flip (default on)")
    a("--crop-scale-min", dest="crop_scale_min", type=float, metavar="F", help="min area fraction of the random crop")
    a("--eval-resize", dest="eval_resize", type=int, metavar="N")
    a("--eval-resize-square", dest="eval_resize_square", action=argparse.BooleanOptionalAction,
      help="eval: resize to N x N, not the short side to N")
    a("--color-jitter", dest="color_jitter", type=float, metavar="F", help="brightness/contrast/saturation jitter")
    a("--auto-augment", dest="auto_augment", choices=AUTO_AUGMENT_POLICIES, help="AutoAugment policy")
    a("--mixup-alpha", dest="mixup_alpha", type=float, metavar="F", help="Mixup with Beta(F, F); 0 = off")
    a("--workers", "-j", "--num_parallel_workers", dest="workers", type=int, metavar="N", help="loader processes per rank")
    a("--synthetic", action="store_true", help="random images, no dataset needed")
    a("--synthetic-samples", dest="synthetic_samples", type=int, metavar="N")
    a("--max-steps", dest="max_steps", type=int, metavar="N")
    a("--seed", type=int, metavar="N")
    a("--device", choices=DEVICES)
    a("--device_target", "--device-target", dest="device_target", choices=sorted(DEVICE_TARGETS))
    a("--eval", dest="eval", action=argparse.BooleanOptionalAction)
    a("--num-classes", "--num_classes", dest="num_classes", type=int, metavar="N")
    a("--log-interval", "--print-freq", dest="log_interval", type=int, metavar="STEPS")
    a("--dist-timeout", dest="dist_timeout", type=float, metavar="SECONDS")
    a("--max-bad-images", dest="max_bad_images", type=float, metavar="FRACTION")
    a("--decoder", metavar="NAME", help="PyTorch image decoder: torchvision (default), pil, or dali (GPU)")
    a("--bucket-cap-mb", dest="bucket_cap_mb", type=int, metavar="MB")
    # Accepted so the reference trainers' scripts keep working; distribution comes from mpirun.
    a("--run_distribute", "--run-distribute", "--distribute", dest="ignored_run_distribute", metavar="X")
    a("--multiprocessing-distributed", dest="ignored_mp", action="store_true")
    return p


def parse_train_args(argv: Sequence[str] | None, prog: str = "kjob_trainer.train") -> tuple[str | None, dict[str, Any]]:
    """(config file, overrides) from the command line. Raises BadInput for bad flags."""
    ns = vars(_parser(prog).parse_args(argv))
    for key in [k for k in ns if k.startswith("ignored_")]:
        del ns[key]
    if "device_target" in ns:
        ns.setdefault("device", DEVICE_TARGETS[ns.pop("device_target")])
    config_file = ns.pop("config_file", None)
    return config_file, ns
