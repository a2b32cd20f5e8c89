"""The four reference recipes, value by value: each shipped config names the upstream
file(s) it copies (repository, path, commit) and holds every training value they set.
The tables below are written from those files (read at the commits the configs cite);
each row is (upstream key, its value there, kjob setting, what kjob must hold)."""

from __future__ import annotations

import re

import pytest

from kjob_trainer.common.config import CONFIG_DIR, make_config

REFERENCE = re.compile(r"^# reference: (?P<repo>[\w.-]+/[\w.-]+) (?P<path>\S+) @ (?P<commit>[0-9a-f]{40})$", re.M)

# PaddlePaddle/PaddleClas ppcls/configs/ImageNet/ResNeSt/ResNeSt50.yaml
PADDLECLAS_RESNEST50 = [
    ("Arch.name", "ResNeSt50", "model", "resnest50"),
    ("Arch.class_num", 1000, "num_classes", 1000),
    ("Global.epochs", 300, "epochs", 300),
    ("Global.print_batch_step", 10, "log_interval", 10),
    ("Global.save_interval", 1, "ckpt_interval", 1),
    ("Global.eval_during_train", True, "eval", True),
    ("AMP.use_amp", False, "amp", "off"),
    ("Loss.Train.CELoss.epsilon", 0.1, "label_smoothing", 0.1),
    ("Optimizer.name", "Momentum", "momentum", 0.9),
    ("Optimizer.momentum", 0.9, "momentum", 0.9),
    ("Optimizer.lr.name", "Cosine", "lr_schedule", "cosine"),
    ("Optimizer.lr (Cosine's eta_min default)", 0.0, "min_lr", 0.0),
    ("Optimizer.lr (no warmup_epoch)", 0, "warmup_epochs", 0.0),
    ("Optimizer.lr.learning_rate", 0.1, "lr", 0.1),
    ("Optimizer.regularizer.coeff (L2, all parameters)", 0.00007, "weight_decay", 0.00007),
    ("Optimizer.regularizer (all parameters)", "L2", "bn_bias_decay", True),
    ("DataLoader.Train.sampler.batch_size", 64, "batch_size", 64),
    ("DataLoader.Train.loader.num_workers", 4, "workers", 4),
    ("RandCropImage.size", 224, "image_size", 224),
    ("RandCropImage (default scale)", (0.08, 1.0), "crop_scale_min", 0.08),
    ("RandFlipImage.flip_code", 1, "hflip", True),
    ("AutoAugment", "ImageNetPolicy", "auto_augment", "imagenet"),
    ("batch_transform_ops.MixupOperator.alpha", 0.2, "mixup_alpha", 0.2),
    ("Eval ResizeImage.resize_short", 256, "eval_resize", 256),
    ("Eval ResizeImage (short side)", 256, "eval_resize_square", False),
    ("(no ColorJitter)", None, "color_jitter", 0.0),
]

# mindspore-ai/models research/cv/ResNeXt: README "Script Parameters", train.py, src/
MINDSPORE_ZOO_RESNEXT50 = [
    ("train.py get_network", "resnext50", "model", "resnext50_32x4d"),
    ("num_classes", 1000, "num_classes", 1000),
    ("max_epoch", 150, "epochs", 150),
    ("per_batch_size", 128, "batch_size", 128),
    ("momentum", 0.9, "momentum", 0.9),
    ("weight_decay", 0.0001, "weight_decay", 0.0001),
    ("get_param_groups (no decay on bias/gamma/beta)", False, "bn_bias_decay", False),
    ("lr_scheduler", "cosine_annealing", "lr_schedule", "cosine"),
    ("eta_min", 0, "min_lr", 0.0),
    ("warmup_epochs", 1, "warmup_epochs", 1.0),
    ("linear_warmup_lr warmup_init_lr", 0, "warmup_start_factor", 0.0),
    ("label_smooth / label_smooth_factor", 0.1, "label_smoothing", 0.1),
    ("is_dynamic_loss_scale", 0, "loss_scale_type", "fixed"),
    ("loss_scale", 1024, "loss_scale", 1024.0),
    ("train.py Model(amp_level=...) for resnext50", "O3", "amp_level", "O3"),
    ("image_size", (224, 224), "image_size", 224),
    ("RandomCropDecodeResize scale", (0.08, 1.0), "crop_scale_min", 0.08),
    ("RandomHorizontalFlip prob", 0.5, "hflip", True),
    ("RandomColorAdjust brightness=contrast=saturation", 0.4, "color_jitter", 0.4),
    ("eval Resize", (256, 256), "eval_resize", 256),
    ("eval Resize (both sides)", (256, 256), "eval_resize_square", True),
    ("classification_dataset num_parallel_workers", 8, "workers", 8),
    ("set_seed", 1, "seed", 1),
    ("dataset_sink_mode", True, "dataset_sink", True),
    ("(no AutoAugment, no Mixup)", None, "auto_augment", None),
    ("(no Mixup)", None, "mixup_alpha", 0.0),
]

# mindspore-lab/mindcv configs/resnext/resnext50_32x4d_ascend.yaml
MINDCV_RESNEXT50 = [
    ("model", "resnext50_32x4d", "model", "resnext50_32x4d"),
    ("num_classes", 1000, "num_classes", 1000),
    ("num_parallel_workers", 8, "workers", 8),
    ("val_while_train", True, "eval", True),
    ("batch_size", 32, "batch_size", 32),
    ("image_resize", 224, "image_size", 224),
    ("scale", (0.08, 1.0), "crop_scale_min", 0.08),
    ("hflip", 0.5, "hflip", True),
    ("crop_pct", 0.875, "eval_resize", 256),
    ("keep_checkpoint_max", 30, "keep_checkpoints", 30),
    ("epoch_size", 150, "epochs", 150),
    ("dataset_sink_mode", True, "dataset_sink", True),
    ("amp_level", "O2", "amp_level", "O2"),
    ("label_smoothing", 0.1, "label_smoothing", 0.1),
    ("scheduler", "cosine_decay", "lr_schedule", "cosine"),
    ("min_lr", 0.0, "min_lr", 0.0),
    ("lr", 0.1, "lr", 0.1),
    ("warmup_epochs", 0, "warmup_epochs", 0.0),
    ("momentum", 0.9, "momentum", 0.9),
    ("weight_decay", 0.0001, "weight_decay", 0.0001),
    ("loss_scale", 1024, "loss_scale", 1024.0),
]

# pytorch/examples imagenet/main.py (its argparse defaults and code)
PYTORCH_EXAMPLES_8P = [
    ("--arch", "resnext50_32x4d", "model", "resnext50_32x4d"),
    ("--epochs", 90, "epochs", 90),
    ("--batch-size (per node of 8 GPUs)", 256, "batch_size", 32),
    ("--lr", 0.1, "lr", 0.1),
    ("--momentum", 0.9, "momentum", 0.9),
    ("--weight-decay", 1e-4, "weight_decay", 1e-4),
    ("SGD(model.parameters(), ...)", "all parameters", "bn_bias_decay", True),
    ("StepLR", "step", "lr_schedule", "step"),
    ("StepLR(step_size=30) over 90 epochs", (30, 60), "lr_milestones", (30, 60)),
    ("StepLR(gamma=0.1)", 0.1, "lr_gamma", 0.1),
    ("(no warm-up)", 0, "warmup_epochs", 0.0),
    ("nn.CrossEntropyLoss()", 0.0, "label_smoothing", 0.0),
    ("RandomResizedCrop(224)", 224, "image_size", 224),
    ("RandomResizedCrop default scale", (0.08, 1.0), "crop_scale_min", 0.08),
    ("RandomHorizontalFlip()", 0.5, "hflip", True),
    ("Resize(256)", 256, "eval_resize", 256),
    ("(no --fp16/AMP)", "fp32", "amp", "off"),
    ("--print-freq", 10, "log_interval", 10),
    ("validate() every epoch", True, "eval", True),
    ("(no Mixup/AutoAugment/jitter)", None, "mixup_alpha", 0.0),
]

RECIPES = {
    "resnest50": ("PaddlePaddle/PaddleClas", ["ppcls/configs/ImageNet/ResNeSt/ResNeSt50.yaml"], PADDLECLAS_RESNEST50),
    "resnext50_mindspore_zoo": ("mindspore-ai/models", [
        "research/cv/ResNeXt/README.md", "research/cv/ResNeXt/train.py", "research/cv/ResNeXt/src/dataset.py",
        "research/cv/ResNeXt/src/lr_generator.py", "research/cv/ResNeXt/src/utils/optimizers__init__.py",
        "research/cv/ResNeXt/src/crossentropy.py"], MINDSPORE_ZOO_RESNEXT50),
    "resnext50_mindcv": ("mindspore-lab/mindcv", ["configs/resnext/resnext50_32x4d_ascend.yaml"], MINDCV_RESNEXT50),
    "resnext50_pytorch8p": ("pytorch/examples", ["imagenet/main.py"], PYTORCH_EXAMPLES_8P),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_cites_its_upstream_files(name):
    repo, paths, _ = RECIPES[name]
    cited = [(m["repo"], m["path"]) for m in REFERENCE.finditer((CONFIG_DIR / f"{name}.yaml").read_text())]
    assert cited == [(repo, p) for p in paths]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_holds_every_upstream_value(name):
    cfg = make_config(name, {"synthetic": True})
    rows = RECIPES[name][2]
    got = [(key, field, getattr(cfg, field)) for key, _, field, _ in rows]
    assert got == [(key, field, want) for key, _, field, want in rows]


def test_recipes_reproduce_the_upstream_lr_on_their_card_count():
    # kjob's lr is per 256 images; the references apply theirs unscaled on their cards.
    assert make_config("resnest50", {"synthetic": True}).scaled_lr(4) == pytest.approx(0.1)  # 4 x 64
    assert make_config("resnext50_mindspore_zoo", {"synthetic": True}).scaled_lr(8) == pytest.approx(0.05)  # 8 x 128
    assert make_config("resnext50_pytorch8p", {"synthetic": True}).scaled_lr(8) == pytest.approx(0.1)  # 8 x 32


def test_mindcv_recipe_config_has_mindcvs_values():
    # mindspore-lab/mindcv configs/resnext/resnext50_32x4d_ascend.yaml, key for key.
    c = make_config("resnext50_mindcv", {"synthetic": True})
    assert (c.framework, c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        "mindspore", "resnext50_32x4d", 150, 32, 0.1, 0.9, 1e-4)
    assert (c.lr_schedule, c.min_lr, c.warmup_epochs, c.label_smoothing) == ("cosine", 0.0, 0.0, 0.1)
    assert (c.amp_level, c.loss_scale, c.loss_scale_type, c.keep_checkpoints) == ("O2", 1024.0, "fixed", 30)
    assert (c.image_size, c.eval_resize_size(), c.crop_scale_min, c.hflip) == (224, 256, 0.08, True)
    assert c.scaled_lr(8) == pytest.approx(0.1)  # 8 cards x 32 = 256: MindCV's lr as is


def test_pytorch8p_step_schedule_decays_tenfold_every_30_epochs():
    from kjob_trainer.common.schedule import LrSchedule

    s = LrSchedule.from_config(make_config("resnext50_pytorch8p", {"synthetic": True}), 8, steps_per_epoch=100)
    assert [round(s.lr_at(e * 100) / 0.1, 6) for e in (0, 29, 30, 59, 60, 89)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
