"""Raw images (``raw_*`` feature types): the image store and transforms, the in-model CLIP encoder, visual
adapters and the unfreeze / BatchNorm options, checkpoints, and a CLI fine-tuning run (spec §2.6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.tiny import make_backbone_dir
from tests.world import make_world, write_raw_images
from vlcli import api
from vlcli.data.features import FeatureError
from vlcli.data.images import ImageStore, ImageTransform, image_transform
from vlcli.data.layout import open_features
from vlcli.features.images import Preprocess
from vlcli.model.image_encoder import ImageEncoderConfig, ImageEncoderError, build_image_encoder
from vlcli.model.params import count_parameters, set_trainable

SIZE = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    data = make_world(root / "datasets", n_train=8, n_eval=4)
    write_raw_images(data, SIZE)
    return {"data": data, "t5": make_backbone_dir(root / "t5", "t5")}


def raw_settings(world, **kw):
    base = dict(task="vqa", backbone=str(world["t5"]), data_root=str(world["data"]), feature_type="raw_RN50",
                image_size=f"{SIZE},{SIZE}", clip_random_init=True)
    base.update(kw)
    return api.load_settings(**base)


def build(settings):
    model = api.build_model(settings, tokenizer=api.build_tokenizer(settings))
    set_trainable(model, settings)
    return model


def batch_for(n=2, images=None):
    ids = torch.tensor([[5, 6, 7, 1], [5, 6, 1, 0]])[:n]
    pixels = torch.randn(n, 3, SIZE, SIZE) if images is None else images
    return dict(input_ids=ids, attention_mask=ids.ne(0).long(), vis_feats=pixels, vis_pos=torch.zeros(n, 0, 4),
                labels=torch.tensor([[5, 1], [6, 1]])[:n], task="vqa")


# ------------------------------------------------------------------------------------- images


def test_image_store_reads_and_normalises_like_the_extractor(world):
    store = open_features(raw_settings(world), "vqa", "karpathy_train")
    image_id = "COCO_train2014_000000000001"
    pixels, boxes = store.get(image_id)
    assert pixels.shape == (3, SIZE, SIZE) and pixels.dtype == np.float32 and boxes.shape == (0, 4)
    path = world["data"] / "COCO/images/train2014" / f"{image_id}.png"
    with Image.open(path) as im:
        expected = Preprocess(SIZE)(im).numpy()
    np.testing.assert_array_equal(pixels, expected)
    # routed by image set: a val2014 id comes from the val2014 folder
    assert open_features(raw_settings(world), "vqa", "karpathy_val").get("COCO_val2014_000000001000")[0].shape == (
        3, SIZE, SIZE)


def test_image_store_errors_name_the_folder_and_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "imgs" / "broken.jpg"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    store = ImageStore(tmp_path / "imgs", ImageTransform(SIZE))
    with pytest.raises(FeatureError, match=r"imgs: no image file for id 'nope'"):
        store.get("nope")
    with pytest.raises(FeatureError, match=r"broken.jpg: cannot read image 'broken'"):
        store.get("broken")
    with pytest.raises(FeatureError, match="image folder not found"):
        ImageStore(tmp_path / "missing", ImageTransform(SIZE)).get("x")


def test_training_augmentation_and_flip_policy(world):
    image = Image.new("RGB", (80, 80), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 40, 80))  # left half white
    plain = ImageTransform(SIZE)(image)
    torch.manual_seed(0)
    augmented = [ImageTransform(SIZE, augment=True)(image) for _ in range(20)]
    assert all(a.shape == plain.shape for a in augmented)
    assert any(not torch.equal(a, plain) for a in augmented)  # crops / erasing happen
    # without flips the white half stays left: column 5 is brighter than column SIZE-5 in every draw
    # whose pixels there were not erased (erasing writes noise; compare medians)
    left = torch.stack([a[:, :, 5].median() for a in augmented])
    right = torch.stack([a[:, :, SIZE - 5].median() for a in augmented])
    assert bool((left > right).all())
    torch.manual_seed(0)
    flipped = [ImageTransform(SIZE, augment=True, hflip=True)(image) for _ in range(40)]
    assert any(a[:, :, 5].median() < a[:, :, SIZE - 5].median() for a in flipped)
    # the policy: flips only for cls unless augment_hflip; no augmentation for evaluation
    s = raw_settings(world, use_data_augmentation=True)
    assert image_transform(s, "vqa", train=True).augment and not image_transform(s, "vqa", train=True).hflip
    assert image_transform(s, "cls", train=True).hflip
    assert not image_transform(s, "vqa", train=False).augment
    assert image_transform(raw_settings(world, use_data_augmentation=True, augment_hflip=True), "nlvr", True).hflip


# ------------------------------------------------------------------------------------ encoder


def test_encoder_shapes_grid_pooled_and_two_images(world):
    model = build(raw_settings(world))
    pixels = torch.randn(2, 3, SIZE, SIZE)
    assert model.encode_images(pixels).shape == (2, (SIZE // 32) ** 2, 2048)
    assert model.encode_images(pixels[:, None].expand(2, 2, 3, SIZE, SIZE)).shape == (2, 2, 4, 2048)
    pooled = build(raw_settings(world, vis_pooling_output=True, n_boxes=1))
    assert pooled.encode_images(pixels).shape == (2, 1, 1024)
    assert pooled.visual.feat_dim == 1024
    with pytest.raises(ImageEncoderError, match="built for --image_size 64"):
        model.encode_images(torch.randn(1, 3, 96, 96))


def test_random_encoder_weights_are_fixed_and_leave_the_global_rng_alone(world):
    a, b = build(raw_settings(world)), build(raw_settings(world, seed=7))
    for (name, p), (_, q) in zip(a.visual_encoder.state_dict().items(), b.visual_encoder.state_dict().items(),
                                 strict=True):
        assert torch.equal(p, q), name
    assert a.visual_encoder.config.as_dict()["weights"] == "random"
    config = ImageEncoderConfig("RN50", SIZE, random_init=True)
    torch.manual_seed(5)
    build_image_encoder(config)
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))  # the encoder's seeded init did not touch the run's stream


def grads_after_step(model):
    model.train()
    model(**batch_for()).loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_only_visual_adapters_and_configured_modules_get_gradients(world):
    model = build(raw_settings(world, use_vis_adapter=True, use_lora=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    got = grads_after_step(model)
    assert got <= trainable
    encoder = {n for n in trainable if n.startswith("visual_encoder.")}
    assert encoder and all(".vis_adapters." in n for n in encoder)
    assert any(".vis_adapters." in n for n in got) and any("lora" in n for n in got)
    assert not any(n.startswith("visual_encoder.") and ".vis_adapters." not in n for n in got)
    groups = count_parameters(model)["groups"]
    assert groups["visual adapters"]["trainable"] == groups["visual adapters"]["total"] > 0
    assert groups["CLIP image encoder"]["trainable"] == 0 and groups["CLIP image encoder"]["total"] > 1_000_000


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        ("unfreeze_vis_encoder", lambda n: True),
        ("unfreeze_vis_last_layer", lambda n: n.startswith(("visual_encoder.tower.layer4.", "visual_encoder.tower.attnpool."))),
        ("unfreeze_batch_norms", lambda n: ".bn" in n or ".downsample.1." in n),
    ],
)
def test_unfreeze_options_select_encoder_parameters(world, flag, expect):
    model = build(raw_settings(world, **{flag: True}))
    names = [n for n, _ in model.visual_encoder.named_parameters(prefix="visual_encoder")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual_encoder.")}
    assert trainable == {n for n in names if expect(n)}
    assert trainable


def test_batch_norm_statistics_follow_freeze_bn_statistics_and_are_checkpointed(world, tmp_path):
    images = torch.randn(2, 3, SIZE, SIZE) * 3 + 1
    frozen = build(raw_settings(world, freeze_bn_statistics=True))
    before = frozen.visual_encoder.tower.bn1.running_mean.clone()
    frozen.train()
    frozen(**batch_for(images=images))
    assert torch.equal(frozen.visual_encoder.tower.bn1.running_mean, before)
    assert frozen.checkpoint_buffers() == []

    s = raw_settings(world, use_vis_adapter=True)
    model = build(s)
    model.train()
    model(**batch_for(images=images))
    assert not torch.equal(model.visual_encoder.tower.bn1.running_mean, before)  # updated, as the original
    assert "visual_encoder.tower.bn1.running_mean" in model.checkpoint_buffers()
    api.save_checkpoint(model, tmp_path / "ck", settings=s)
    saved = load_file(str(tmp_path / "ck.safetensors"))
    assert "visual_encoder.tower.bn1.running_mean" in saved
    assert "visual_encoder.tower.conv1.weight" not in saved  # frozen weights are rebuilt, not stored
    manifest = json.loads((tmp_path / "ck.json").read_text())
    assert manifest["image_encoder"] == {"clip_type": "RN50", "image_size": SIZE, "pooled": False, "weights": "random"}
    fresh = build(s)
    api.load_checkpoint(fresh, tmp_path / "ck.safetensors", settings=s)
    model.eval()
    fresh.eval()
    b = batch_for(images=images)
    with torch.no_grad():
        assert torch.equal(model(**b).logits, fresh(**b).logits)


def test_inspect_config_counts_the_encoder_offline(cli):
    res = cli("inspect-config", "vqa", "--backbone", "t5-small", "--feature_type", "raw_RN50", "--image_size",
              "224,224", "--use_vis_adapter", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    text = json.dumps(data["parameters"])
    assert "CLIP image encoder" in text and "visual adapters" in text


# ---------------------------------------------------------------------------------------- CLI


def test_finetune_vqa_on_raw_images_with_visual_adapters(cli, world, tmp_path):
    run = tmp_path / "run"
    res = cli("finetune", "vqa", "--feature_type", "raw_RN50", "--use_vis_adapter", "--use_adapter",
              "--image_size", f"{SIZE},{SIZE}", "--clip_random_init", "--use_data_augmentation",
              "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--batch_size", "4",
              "--epochs", "1", "--num_workers", "0", "--output", str(run))
    assert res.code == 0, res.err
    saved = load_file(str(run / "LAST.safetensors"))
    adapters = [k for k in saved if ".vis_adapters." in k]
    assert adapters
    frozen = [k for k in saved if k.startswith("visual_encoder.") and ".vis_adapters." not in k]
    assert frozen and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                          for k in frozen)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "accuracy" in record["valid/vqa"]
    # the run reloads: eval rebuilds the (seeded) encoder and the adapters and scores the same split
    res = cli("eval", "--load", str(run / "LAST"), "--json")
    assert res.code == 0, res.err


def test_raw_vit_and_bad_image_size_are_config_errors(cli, world):
    res = cli("finetune", "vqa", "--feature_type", "raw_ViT", "--backbone", str(world["t5"]))
    assert res.code == 2 and "raw_ViT is not supported" in res.err
    res = cli("finetune", "vqa", "--feature_type", "raw_RN50", "--image_size", "100,100", "--backbone",
              str(world["t5"]))
    assert res.code == 2 and "multiple of 32" in res.err


def test_classification_on_raw_images(cli, world, tmp_path):
    root = tmp_path / "data"
    base = root / "tiny-imagenet-200"
    classes = {"n00000001": ("red square", (220, 30, 30)), "n00000002": ("blue square", (30, 30, 220))}
    base.mkdir(parents=True)
    (base / "words.txt").write_text("".join(f"{w}\t{name}, box\n" for w, (name, _) in classes.items()))
    for split, n in (("train", 4), ("val", 2)):
        for wnid, (_, color) in classes.items():
            folder = base / split / wnid / "images"
            folder.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (SIZE + 8, SIZE), color).save(folder / f"{wnid}_{split}{k}.JPEG")
    run = tmp_path / "run"
    res = cli("finetune", "cls", "--feature_type", "raw_RN50", "--clip_random_init", "--image_size", f"{SIZE},{SIZE}",
              "--use_data_augmentation", "--unfreeze_vis_last_layer", "--backbone", str(world["t5"]),
              "--data_root", str(root), "--batch_size", "4", "--epochs", "1", "--num_workers", "0",
              "--output", str(run))
    assert res.code == 0, res.err
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "accuracy" in record["valid/cls"]
    saved = load_file(str(run / "LAST.safetensors"))
    assert any(k.startswith("visual_encoder.tower.layer4.") and k.endswith("conv1.weight") for k in saved)
    assert not any(k.startswith("visual_encoder.tower.layer3.") and k.endswith("conv1.weight") for k in saved)


@pytest.mark.parametrize(("adam", "kind"), [(False, torch.optim.SGD), (True, torch.optim.AdamW)])
def test_separate_visual_optimiser_holds_the_encoder_parameters(world, adam, kind):
    from vlcli.train.optim import build_optimizers

    s = raw_settings(world, use_vis_adapter=True, use_adapter=True, use_separate_optimizer_for_visual=True,
                     use_adam_for_visual=adam, vis_lr=0.5, lr=1e-3)
    model = build(s)
    main, visual = build_optimizers(model, s)
    names = {id(p): n for n, p in model.named_parameters()}
    vis_names = {names[id(p)] for g in visual.param_groups for p in g["params"]}
    main_names = {names[id(p)] for g in main.param_groups for p in g["params"]}
    assert isinstance(visual, kind) and {g["lr"] for g in visual.param_groups} == {0.5}
    assert vis_names == {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual_encoder.")}
    assert vis_names and not any(n.startswith("visual_encoder.") for n in main_names)
    assert {g["lr"] for g in main.param_groups} == {1e-3}


def test_four_task_mix_on_raw_images(cli, world, tmp_path):
    """GQA (VG / GQA folders), NLVR2 (two images per example: (B, 2, 3, S, S)) and captioning (COCO val2014)
    read their raw images too; one shared encoder serves every task."""
    run = tmp_path / "mix"
    res = cli("finetune", "multitask", "--tasks", "vqa,gqa,nlvr,caption", "--feature_type", "raw_RN50",
              "--use_vis_adapter", "--use_adapter", "--image_size", f"{SIZE},{SIZE}", "--clip_random_init",
              "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--batch_size", "4",
              "--epochs", "1", "--num_workers", "0", "--output", str(run))
    assert res.code == 0, res.err
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"valid/vqa", "valid/gqa", "valid/nlvr", "valid/caption"} <= set(record)
    assert "accuracy" in record["valid/nlvr"] and "CIDEr" in record["valid/caption"]
