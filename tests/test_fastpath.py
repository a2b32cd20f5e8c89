"""The PyTorch fast path (torch/input.py, torch/dali.py, torch/data.py's RankInput): torchvision.io
decoding, uint8 transforms, the benchmarks' loader helpers (bench/input_kit.py), the
data-wait meter (progress.py), DALI's absence, and that channels-last / torch.compile do
not change the loss curve."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kjob_trainer.torch import dali as dali_input
from kjob_trainer.torch import input as fi
from kjob_trainer.common.errors import BadInput
from kjob_trainer.common.progress import DataWaitMeter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import input_kit as kit  # noqa: E402  (bench-only helpers: not part of the trainer)


def _jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A smooth random colour image (upsampled noise, so it has photo-like structure)."""
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """root/<class>/<i>.JPEG: 2 classes x 8 images of 120x90 (and one portrait per class)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"n{c:08d}").mkdir()
        for i in range(8):
            w, h = (90, 120) if i == 0 else (120, 90)
            (root / f"n{c:08d}" / f"{i}.JPEG").write_bytes(_jpeg(rng, w, h))
    return root


def test_decode_gives_uint8_rgb_chw(image_folder):
    samples, classes = kit.scan_image_folder(image_folder)
    assert classes == ["n00000000", "n00000001"] and len(samples) == 16
    img = fi.read_rgb(samples[1][0])
    assert img.dtype == torch.uint8 and img.shape == (3, 90, 120)
    portrait = fi.read_rgb(samples[0][0])
    assert portrait.shape == (3, 120, 90)


def test_torchvision_decode_matches_pil_decode(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    for path, _ in samples[:4]:
        ours = fi.read_rgb(path)
        pil = torch.from_numpy(np.array(fi.load_pil_rgb(path))).permute(2, 0, 1)
        # Both are libjpeg-turbo with the same IDCT; allow a rounding step.
        assert (ours.int() - pil.int()).abs().max() <= 2


def test_fast_center_crop_matches_pil_path(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    fast = kit.FastImageDataset(samples, size=64, train=False, decoder="torchvision")
    slow = kit.FastImageDataset(samples, size=64, train=False, decoder="pil")
    for i in (0, 3, 9):
        a, label_a = fast[i]
        b, label_b = slow[i]
        assert a.shape == b.shape == (3, 64, 64) and a.dtype == b.dtype == torch.uint8
        assert label_a == label_b == samples[i][1]
        diff = (a.float() - b.float()).abs()
        # Antialiased bilinear in torch vs PIL differ by rounding, not by geometry.
        assert diff.mean() < 1.0 and diff.max() <= 12


def test_image_transform_options(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    path = samples[1][0]
    for decoder in ("torchvision", "pil"):
        x = fi.image_transform(decoder, 40, train=False, eval_resize=48, normalize=True)(path)
        assert x.shape == (3, 40, 40) and x.dtype == torch.float32
        raw = fi.image_transform(decoder, 40, train=False, eval_resize=48)(path)
        torch.testing.assert_close(x, fi.normalize_batch(raw.unsqueeze(0))[0])
    # Same seed, same box: flip=False gives the unflipped twin of the flip=True output.
    flipping = fi.image_transform("torchvision", 30, train=True)
    plain = fi.image_transform("torchvision", 30, train=True, flip=False)
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        a = flipping(path)
        torch.manual_seed(seed)
        b = plain(path)
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
        flipped += not torch.equal(a, b)
    assert 0 < flipped < 8
    with pytest.raises(fi.FastInputError, match="image size must be >= 1"):
        fi.image_transform("torchvision", 0, train=True)


def _rank_input(root, decoder: str, *, train: bool, batch: int = 4, rank: int = 0, world: int = 1,
                channels_last: bool = False):
    """The trainer's input for `root` (one split) as RankInput builds it, on the CPU."""
    import dataclasses

    from kjob_trainer.torch import data as data_mod
    from kjob_trainer.common.config import TrainConfig
    from kjob_trainer.common.dataset_index import scan_folder

    cfg = dataclasses.replace(TrainConfig(), decoder=decoder, image_size=48, batch_size=batch, workers=0)
    split = scan_folder(root, "train" if train else "val")
    dataset = data_mod.ImageDataset(split, data_mod.build_transforms(cfg, train), cfg.seed)
    batches = data_mod.ShardBatches(len(split), batch, rank, world, cfg.seed, train)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return data_mod.RankInput(dataset, batches, cfg, torch.device("cpu"), fmt), dataset


def test_trainer_workers_ship_uint8_and_the_device_normalises(image_folder):
    source, dataset = _rank_input(image_folder, "torchvision", train=False, channels_last=True)
    image, label, index, bad = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 48) and (index, bad) == (3, 0)
    batches = list(source.epoch(0))
    assert [len(b[0]) for b in batches] == [4, 4, 4, 4]
    x, y, ids, bad = batches[0]
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert ids.tolist() == [0, 1, 2, 3] and bad.tolist() == [0, 0, 0, 0]
    assert y.tolist() == [dataset.split.labels[i] for i in range(4)]
    # Exactly the normalisation of the workers' uint8 images, done on the device.
    expected = fi.normalize_batch(torch.stack([dataset[i][0] for i in range(4)]))
    assert torch.equal(x, expected)


def test_trainer_decoders_agree_on_eval_crops(image_folder):
    fast = torch.cat([b[0] for b in _rank_input(image_folder, "torchvision", train=False)[0].epoch(0)])
    pil = torch.cat([b[0] for b in _rank_input(image_folder, "pil", train=False)[0].epoch(0)])
    dali = torch.cat([b[0] for b in _rank_input(image_folder, "dali", train=False)[0].epoch(0)])
    assert fast.shape == pil.shape == dali.shape == (16, 3, 48, 48)
    # Normalised units (1 grey level ~ 0.017): the worker decoders differ by rounding only.
    assert (fast - pil).abs().mean() < 0.005 and (fast - pil).abs().max() < 0.1
    # DALI keeps the fractional size of the resized image (73.3 x 55 for 120 x 90), so its
    # center crop can start one pixel further along: the same crop, shifted by at most one.
    for a, b in zip(fast, dali):
        shifted = [(a[:, 2 + dy:46 + dy, 2 + dx:46 + dx] - b[:, 2:46, 2:46]).abs().mean()
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert min(shifted) < 0.1


def test_trainer_dali_input_follows_the_sampler(image_folder):
    """DALI reads each rank's files in the sampler's order: the same shards, and a mid-epoch
    resume (start_batch) continues with the same samples as the worker path."""
    for rank in (0, 1):
        workers = [b[2].tolist() for b in _rank_input(image_folder, "torchvision", train=True, rank=rank, world=2)[0].epoch(1, 1)]
        dali_input_, _ = _rank_input(image_folder, "dali", train=True, rank=rank, world=2, channels_last=True)
        dali = list(dali_input_.epoch(1, 1))
        assert [b[2].tolist() for b in dali] == workers and len(workers) == 1
        x, y, ids, bad = dali[0]
        assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last) and bad.tolist() == [0] * 4
        assert y.tolist() == [dali_input_.dataset.split.labels[i] for i in ids.tolist()]


def test_trainer_dali_names_a_corrupt_file(tmp_path, image_folder):
    import shutil

    root = tmp_path / "val"
    shutil.copytree(image_folder, root)
    broken = root / "n00000001" / "5.JPEG"
    broken.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 20)
    source, _ = _rank_input(root, "dali", train=False)
    with pytest.raises(BadInput, match=rf"^dataset: {broken} cannot be decoded; the DALI decoder stops at a "
                                       r"corrupt image instead of skipping it: remove the file or train with "
                                       r"--decoder torchvision$") as e:
        list(source.epoch(0))
    assert e.value.exit_code == 2


def test_train_transform_shape_and_determinism(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    ds = kit.FastImageDataset(samples, size=32, train=True)
    torch.manual_seed(7)
    first = [ds[i][0] for i in range(4)]
    torch.manual_seed(7)
    again = [ds[i][0] for i in range(4)]
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.uint8 for x in first)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    torch.manual_seed(8)
    assert not all(torch.equal(x, ds[i][0]) for i, x in enumerate(first))


def test_rrc_boxes_fit_and_follow_torchvision_distribution():
    torch.manual_seed(0)
    boxes = np.array([fi.rrc_params(375, 500, torch.rand(23).tolist()) for _ in range(2000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 375).all() and (left + w <= 500).all()
    area = h * w / (375 * 500)
    assert 0.06 < area.min() and area.max() <= 1.0
    assert abs(area.mean() - 0.435) < 0.03  # torchvision's get_params gives 0.435 here
    # Extreme aspect ratios never fit a try: the fallback is a centred crop at the clamped ratio.
    assert fi.rrc_params(10, 1000, [0.99] * 23) == (0, 493, 10, 13)
    assert fi.rrc_params(1000, 10, [0.99] * 23) == (493, 0, 13, 10)


def test_normalize_batch_is_imagenet_normalisation():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = fi.normalize_batch(batch)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (batch.float() / 255 - mean) / std)
    cl = fi.normalize_batch(batch, channels_last=True, dtype=torch.bfloat16)
    assert cl.dtype == torch.bfloat16 and cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.float(), out, atol=0.02, rtol=0.01)


def test_loader_options_only_pass_worker_options_with_workers():
    none = kit.LoaderOptions(num_workers=0).dataloader_kwargs()
    assert "prefetch_factor" not in none and "persistent_workers" not in none
    assert none["pin_memory"] is torch.cuda.is_available()
    two = kit.LoaderOptions(num_workers=2, prefetch_factor=3, pin_memory=False).dataloader_kwargs()
    assert two == {"num_workers": 2, "pin_memory": False, "drop_last": True,
                   "persistent_workers": True, "prefetch_factor": 3}
    with pytest.raises(fi.FastInputError, match="workers must be >= 0"):
        kit.LoaderOptions(num_workers=-1).dataloader_kwargs()
    with pytest.raises(fi.FastInputError, match="prefetch factor must be >= 1"):
        kit.LoaderOptions(num_workers=1, prefetch_factor=0).dataloader_kwargs()


@pytest.mark.timeout(60)
def test_worker_loader_through_prefetcher_and_meter(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    ds = kit.FastImageDataset(samples, size=32, train=True)
    opts = kit.LoaderOptions(num_workers=1, prefetch_factor=2, persistent_workers=True)
    loader = kit.make_loader(ds, 4, shuffle=True, options=opts, seed=0)
    meter = DataWaitMeter(fi.DevicePrefetcher(loader, "cpu", channels_last=True))
    for epoch in range(2):  # persistent workers serve the second epoch too
        batches = list(meter)
        assert len(batches) == len(meter) == 4
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert meter.steps == 8 and meter.wait_s > 0


def test_data_wait_meter_tells_input_bound_from_compute_bound():
    def slow_source(n, delay):
        for i in range(n):
            time.sleep(delay)
            yield i

    starved = DataWaitMeter(slow_source(5, 0.02))
    assert list(starved) == [0, 1, 2, 3, 4]
    assert starved.input_bound and starved.wait_share > 0.8
    assert starved.wait_ms_per_step >= 15
    assert "input-bound" in starved.report()

    busy = DataWaitMeter(range(5))
    for _ in busy:
        time.sleep(0.02)  # the "training step"
    assert not busy.input_bound and busy.wait_share < 0.1
    assert busy.summary()["steps"] == 5 and "input-bound" not in busy.report()
    busy.reset()
    assert busy.steps == 0 and busy.wait_share == 0.0

    # A window reset mid-iteration measures from the reset, not from the last batch.
    meter = DataWaitMeter(range(6))
    for i in meter:
        if i == 2:
            meter.reset()
        time.sleep(0.02)
    assert meter.steps == 3 and not meter.input_bound and meter.wait_share < 0.1


def test_dali_requested_without_dali_gives_clear_error(monkeypatch):
    # A None entry in sys.modules makes `import nvidia.dali` fail, DALI installed or not.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(fi.DaliUnavailable, match=r"pip install nvidia-dali-cuda130") as e:
        dali_input.make_dali_loader([("x.JPEG", 0)], 2)
    assert isinstance(e.value, BadInput) and e.value.exit_code == 2
    assert "\n" not in str(e.value)
    with pytest.raises(fi.FastInputError, match=r"kjob_trainer\.torch\.dali\.make_dali_loader"):
        kit.FastImageDataset([("x.JPEG", 0)], decoder="dali")


def test_dali_cpu_pipeline(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    loader = dali_input.make_dali_loader(samples, 4, size=32, train=True, device="cpu", num_threads=1)
    batches = list(loader)
    assert len(batches) == 4
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -3 < float(x.mean()) < 3


def test_corrupt_and_bad_options_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 10)
    with pytest.raises(fi.CorruptImage, match=r"bad\.JPEG: cannot decode image") as e:
        fi.read_rgb(bad)
    assert isinstance(e.value, ValueError) and e.value.exit_code == 2
    with pytest.raises(fi.CorruptImage, match=r"bad\.JPEG"):
        fi.load_pil_rgb(bad)
    with pytest.raises(fi.FastInputError, match=r"^unknown image decoder 'turbo': choose torchvision or pil$"):
        kit.FastImageDataset([], decoder="turbo")
    with pytest.raises(fi.FastInputError, match="no such folder"):
        kit.scan_image_folder(tmp_path / "missing")
    with pytest.raises(fi.FastInputError, match="batch size must be >= 1"):
        kit.make_loader(kit.FastImageDataset([]), 0)


# --------------------------------------------------------------------------- loss curves


def _tiny_net() -> torch.nn.Module:
    """A ResNeXt-flavoured toy: conv-BN-ReLU, a grouped conv, global pool, linear."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))


def _loss_curve(batches, *, channels_last: bool, compile: bool, steps: int = 6) -> list[float]:
    """Train the toy net from a fixed init on fixed uint8 batches with the fast-path options."""
    torch.manual_seed(0)
    model = _tiny_net()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4, foreach=True)
    step_model = torch.compile(model) if compile else model
    losses = []
    for images, labels in fi.DevicePrefetcher(batches[:steps], "cpu", channels_last=channels_last):
        loss = torch.nn.functional.cross_entropy(step_model(images), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return losses


@pytest.fixture(scope="module")
def uint8_batches(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    ds = kit.FastImageDataset(samples, size=24, train=True)
    torch.manual_seed(1)
    loader = kit.make_loader(ds, 8, shuffle=True, options=kit.LoaderOptions(num_workers=0), seed=1)
    batches = list(loader)
    return batches * 3  # 6 steps over the same 16 images: the loss must fall


def test_channels_last_gives_the_same_loss_curve(uint8_batches):
    base = _loss_curve(uint8_batches, channels_last=False, compile=False)
    fast = _loss_curve(uint8_batches, channels_last=True, compile=False)
    assert base[-1] < base[0]  # it learns, so equal curves mean something
    np.testing.assert_allclose(fast, base, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # inductor compiles C++ for the forward and backward graphs (~25 s on 2 cores)
@pytest.mark.timeout(240)
def test_torch_compile_gives_the_same_loss_curve(uint8_batches):
    base = _loss_curve(uint8_batches, channels_last=False, compile=False)
    fast = _loss_curve(uint8_batches, channels_last=True, compile=True)
    assert base[-1] < base[0]
    np.testing.assert_allclose(fast, base, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- recipe augmentations


def _recipe_dataset(root, **recipe):
    import dataclasses

    from kjob_trainer.torch import data as torch_data
    from kjob_trainer.common.config import TrainConfig
    from kjob_trainer.common.dataset_index import scan_folder

    cfg = dataclasses.replace(TrainConfig(), image_size=32, **recipe)
    split = scan_folder(root, "train")
    return torch_data.ImageDataset(split, torch_data.build_transforms(cfg, True), cfg.seed)


@pytest.mark.parametrize("recipe", [{"auto_augment": "imagenet"}, {"color_jitter": 0.4}])
def test_recipe_augmentation_is_uint8_and_fixed_by_seed_epoch_and_sample(image_folder, recipe):
    """AutoAugment (PaddleClas) and colour jitter (the MindSpore zoo) run on the uint8 tensor
    and draw from the per-sample seed: the same (epoch, sample) gives the same image in any
    process (what an exact resume needs), another epoch another one."""
    plain = _recipe_dataset(image_folder)
    augmented = _recipe_dataset(image_folder, **recipe)
    n = len(augmented)
    first = [augmented[i][0] for i in range(6)]
    assert all(x.dtype == torch.uint8 and x.shape == (3, 32, 32) for x in first)
    assert all(torch.equal(x, augmented[i][0]) for i, x in enumerate(first))
    assert not all(torch.equal(x, augmented[n + i][0]) for i, x in enumerate(first))  # epoch 1
    # The recipe op comes after the same crop and flip: it changed some images.
    assert not all(torch.equal(x, plain[i][0]) for i, x in enumerate(first))


def test_dali_refuses_a_recipe_augmentation_it_does_not_implement(image_folder):
    with pytest.raises(BadInput, match="--decoder dali implements crop and flip only"):
        _recipe_dataset(image_folder, decoder="dali", auto_augment="imagenet")


def test_eval_square_resize_stretches_instead_of_keeping_the_aspect(image_folder):
    samples, _ = kit.scan_image_folder(image_folder)
    path = samples[1][0]  # 120 x 90
    short = fi.image_transform("torchvision", 40, train=False, eval_resize=48)(path)
    square = fi.image_transform("torchvision", 40, train=False, eval_resize=48, eval_square=True)(path)
    pil_square = fi.image_transform("pil", 40, train=False, eval_resize=48, eval_square=True)(path)
    assert short.shape == square.shape == (3, 40, 40) and not torch.equal(short, square)
    assert (square.float() - pil_square.float()).abs().mean() < 2.0
