"""Raw-image preprocessing equals the original VL-Adapter loaders' and open_clip's, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vlcli.data.images import ImageTransform
from vlcli.features.images import CLIP_MEAN, CLIP_STD, Preprocess

SIZES = [(640, 480), (1000, 667), (375, 500)]


def image(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def original_eval(n_px):
    """VL-T5/src/vis_encoder.py `_transform(n_px)` of the original, written out with torchvision."""
    return T.Compose([T.Resize(n_px, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(n_px),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def original_train(n_px):
    """VL-T5/src/vqa_raw_data.py `augmentation_transform(image_size)` of the original."""
    return T.Compose([T.Resize(n_px, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      T.RandomCrop(n_px, padding=int(n_px[0] * 0.0625), padding_mode="reflect"),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD),
                      T.RandomErasing()])


@pytest.mark.parametrize("size", SIZES)
def test_crop_equals_open_clips_image_transform(size):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    img = image(size)
    assert torch.equal(Preprocess(224, "crop")(img), reference(img))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_squash_equals_the_original_loader(size, mode):
    img = image(size, mode)
    assert torch.equal(ImageTransform(224)(img), original_eval((224, 224))(img))
    assert torch.equal(Preprocess(224, "squash")(img), original_eval((224, 224))(img))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_training_augmentation_equals_the_original_with_the_same_seed(seed):
    img = image((640, 480))
    torch.manual_seed(seed)
    ours = ImageTransform(128, augment=True, hflip=True)(img)
    torch.manual_seed(seed)
    theirs = original_train((128, 128))(img)
    assert torch.equal(ours, theirs)


def test_no_flip_unless_asked():
    """Questions talk about left and right: without --augment_hflip the original's flip step is left out."""
    img = image((320, 240))
    no_flip = T.Compose([T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC),
                         T.RandomCrop((64, 64), padding=4, padding_mode="reflect"), lambda im: im.convert("RGB"),
                         T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD), T.RandomErasing()])
    for seed in range(6):
        torch.manual_seed(seed)
        ours = ImageTransform(64, augment=True, hflip=False)(img)
        torch.manual_seed(seed)
        assert torch.equal(ours, no_flip(img))
