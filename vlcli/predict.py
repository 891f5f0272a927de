"""Run a trained model on your own images: :class:`Predictor` (``api.Predictor``) and ``vlcli predict``.

The run directory says everything: its ``config.json`` rebuilds the settings, ``BEST`` (or another
checkpoint) is loaded exactly, and the image becomes the model's visual input the way the run saw it:

* CLIP grid runs (RN50, RN101, RN50x4, ViT): the grid features are extracted in-process with the settings
  recorded in the ``manifest.json`` of the run's feature folder (tower weights, image size, resize, the
  demo's per-channel standardisation), then stored in the run's feature dtype, as ``extract-features`` did;
* ``raw_*`` runs: the model's own image encoder reads the pixels through the run's evaluation transform;
* BUTD runs: the region features come from a detector vlcli does not have; give a precomputed BUTD h5
  with ``features=`` (the image is looked up by id: its file stem, or ``image_id``).

Inputs go through the task's own dataset and collate, and answers through the task's own ``predict``,
so a prediction here is the one ``vlcli eval`` makes for the same image and question.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlcli.errors import VlcliError

QUESTION_TASKS = ("vqa", "gqa")
CAPTION_TASKS = ("caption",)
SUPPORTED = QUESTION_TASKS + CAPTION_TASKS
CLIP_FOLDER = {"vqa": "coco.clip", "caption": "coco.clip", "gqa": "vg.clip"}
"""The data path whose feature folder (and its manifest) a task's CLIP run read."""


class PredictError(VlcliError):
    """A prediction cannot be made: a bad run, image, task or input file."""


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise PredictError(f"--image {path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise PredictError(f"--image {path}: not a readable image ({exc}); give a JPEG or PNG file") from None


class Predictor:
    """A trained run, ready to answer questions about (or caption) images."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "BEST", device: str = "cpu", task: str | None = None,
                 features: str | Path | None = None) -> None:
        from vlcli import api
        from vlcli.config.resolve import settings_from_run_config

        self.run = Path(run_dir).expanduser()
        config = self.run / "config.json"
        if not config.is_file():
            raise PredictError(f"--load {self.run}: no config.json; give a run directory written by vlcli finetune")
        self.settings = settings_from_run_config(config)
        self.task = self._pick_task(task)
        self._visual = _VisualInput(self.settings, self.task, features)  # a BUTD run without --features: now
        path = Path(checkpoint).expanduser()
        path = path if path.suffix == ".safetensors" else self.run / f"{checkpoint}.safetensors"
        if not path.is_file():
            raise PredictError(f"--checkpoint {checkpoint}: {path} does not exist (BEST, LAST, EpochNN or a file)")
        self.device = torch.device(device)
        self.tokenizer = api.build_tokenizer(self.settings)
        self.model = api.build_model(self.settings)
        api.load_checkpoint(self.model, path, settings=self.settings)
        self.model.to(self.device).eval()
        self.feature_type = str(self.settings.get("feature_type"))

    def _pick_task(self, task: str | None) -> str:
        tasks = list(self.settings.derived.tasks)
        if task is None:
            if len(tasks) > 1:
                raise PredictError(f"the run trained {', '.join(tasks)}; choose one with --task")
            task = tasks[0]
        if task not in tasks:
            raise PredictError(f"--task {task}: the run was trained for {', '.join(tasks)}")
        if task not in SUPPORTED:
            raise PredictError(f"--task {task}: predict answers questions (vqa, gqa) and captions images (caption)")
        return task

    # --------------------------------------------------------------------------------- public API

    def answer(self, image: Any, question: str, topk: int | None = None) -> str | list[tuple[str, float]]:
        """The answer to ``question`` about ``image`` (a path or a PIL image); with ``topk`` the K most likely
        answers and their probabilities under the model (beam search, then each answer's exact probability)."""
        if self.task not in QUESTION_TASKS:
            raise PredictError(f"the run's task is {self.task}: use caption(image)")
        result = self.predict([{"image": image, "question": question}], topk=topk)[0]
        return result["topk"] if topk else result["answer"]

    def caption(self, image: Any) -> str:
        if self.task not in CAPTION_TASKS:
            raise PredictError(f"the run's task is {self.task}: use answer(image, question)")
        return self.predict([{"image": image}])[0]["answer"]

    def predict(self, items: Sequence[Mapping[str, Any]], topk: int | None = None,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"image", "question"|"text"}]`` -> ``[{..., "answer"[, "topk"]}]`` in order, batched."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            out += self._batch(list(items[start : start + batch_size]), topk)
        return out

    # ------------------------------------------------------------------------------------ internals

    def _batch(self, items: list[Mapping[str, Any]], topk: int | None) -> list[dict[str, Any]]:
        from vlcli.tasks import get_task
        from vlcli.tasks.base import Example

        task = get_task(self.task)
        examples, images = [], {}
        for i, item in enumerate(items):
            image_id = self._visual.image_id(item, i)
            images[image_id] = item["image"]
            text = self._text(task, item)
            examples.append(Example(id=i, image_ids=(image_id,), text=text))
        store = self._visual.store(images)
        dataset = task.dataset_class(task, "predict", examples, self.tokenizer, store, train=False,
                                     max_text_length=task.input_length(self.settings),
                                     target_max_length=task.target_length(self.settings),
                                     rng=np.random.default_rng(0))
        batch = self._to_device(dataset.collate([dataset[i] for i in range(len(dataset))]))
        with torch.no_grad():
            answers = task.predict(self.model, batch, self.settings, self.tokenizer)
            ranked = self._topk(task, batch, topk) if topk else None
        results = []
        for i, item in enumerate(items):
            row = {k: (str(v) if isinstance(v, Path) else v) for k, v in item.items() if isinstance(v, (str, Path))}
            row["answer"] = answers[i]
            if ranked is not None:
                row["topk"] = ranked[i]
            results.append(row)
        return results

    def _text(self, task: Any, item: Mapping[str, Any]) -> str:
        if self.task in CAPTION_TASKS:
            return task.caption_input(self.settings)
        question = item.get("question", item.get("text"))
        if not isinstance(question, str) or not question.strip():
            raise PredictError(f"--question: a {self.task} run answers a question about the image; give one")
        return task.input_text(self.settings, question.strip())

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dtype = next(self.model.parameters()).dtype
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(dtype)
            out[key] = value
        return out

    def _topk(self, task: Any, batch: dict[str, Any], k: int) -> list[list[tuple[str, float]]]:
        """K beams per input, each scored with its exact sequence probability, most likely first."""
        visual = {"vis_attention_mask": batch["vis_attention_mask"]} if "vis_attention_mask" in batch else {}
        ids = self.model.generate(batch["input_ids"], batch["attention_mask"], batch["vis_feats"], batch["vis_pos"],
                                  task=self.task, num_beams=max(k, 2), num_return_sequences=k,
                                  max_length=task.run(self.settings).gen_max_length, **visual)
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        n = batch["input_ids"].shape[0]
        ranked: list[list[tuple[str, float]]] = []
        for row in range(n):
            candidates = list(dict.fromkeys(t.strip() for t in texts[row * k : (row + 1) * k]))
            probs = self._probabilities(batch, row, candidates)
            ranked.append(sorted(zip(candidates, probs, strict=True), key=lambda x: -x[1]))
        return ranked

    def _probabilities(self, batch: dict[str, Any], row: int, candidates: list[str]) -> list[float]:
        """P(answer | image, question) of each candidate under the model (teacher forcing)."""
        labels = [self.tokenizer.encode(c, None) for c in candidates]
        width = max(len(x) for x in labels)
        target = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, x in enumerate(labels):
            target[i, : len(x)] = torch.as_tensor(x)
        target = target.to(self.device)

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t[row : row + 1].expand(len(labels), *t.shape[1:])

        visual = {"vis_attention_mask": repeat(batch["vis_attention_mask"])} if "vis_attention_mask" in batch else {}
        out = self.model(repeat(batch["input_ids"]), repeat(batch["attention_mask"]), repeat(batch["vis_feats"]),
                         repeat(batch["vis_pos"]), labels=target, task=self.task, **visual)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        mask = target != -100
        picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
        return [float(v) for v in picked.sum(-1).exp()]


class _VisualInput:
    """Turns images into the run's visual input (see the module docstring)."""

    def __init__(self, settings: Any, task: str, features: str | Path | None) -> None:
        from vlcli.config.derive import GRID_FEAT_DIM

        self.settings, self.task = settings, task
        self.feature_type = str(settings.get("feature_type"))
        self.features = Path(features).expanduser() if features is not None else None
        self.grid = self.feature_type in GRID_FEAT_DIM
        self.raw = self.feature_type.startswith("raw_")
        if self.features is not None and not self.features.is_file():
            raise PredictError(f"--features {self.features}: no such file")
        if self.feature_type == "butd" and self.features is None:
            raise PredictError("this run reads BUTD region features, which need a Faster R-CNN detector vlcli does "
                               "not have; give the image's precomputed BUTD features with --features FILE.h5 "
                               "(the image is looked up by its file stem or --image_id)")
        self._encoder: Any = None

    def image_id(self, item: Mapping[str, Any], index: int) -> str:
        if item.get("image_id"):
            return str(item["image_id"])
        image = item.get("image")
        return Path(image).stem if isinstance(image, (str, Path)) else f"image{index}"

    def store(self, images: Mapping[str, Any]) -> Any:
        from vlcli.data.features import ArrayStore, BUTDStore

        if self.features is not None:
            store = BUTDStore(self.features, n_boxes=int(self.settings.get("n_boxes")), feat_dim=None)
            missing = [i for i in images if i not in store]
            if missing:
                raise PredictError(f"--features {self.features}: no image {missing[0]!r} in the file; pass --image_id")
            return store
        loaded = {k: (_open_image(Path(v).expanduser()) if isinstance(v, (str, Path)) else v) for k, v in images.items()}
        if self.raw:
            return _PixelStore(self.settings, self.task, loaded)
        return ArrayStore({k: self._grid_features(img) for k, img in loaded.items()})

    def _grid_features(self, image: Any) -> np.ndarray:
        encoder, preprocess, shift, scale, dtype = self._extractor()
        pixels = preprocess(image).unsqueeze(0)
        with torch.no_grad():
            grid = encoder(pixels)[0][0].float()
        if shift is not None:
            grid = (grid - shift) / scale
        return grid.numpy().astype(dtype).astype(np.float32)

    def _extractor(self) -> tuple[Any, Any, Any, Any, Any]:
        """Tower, preprocessing and standardisation as the run's feature folder manifest records them."""
        if self._encoder is not None:
            return self._encoder
        from vlcli.data.layout import data_path
        from vlcli.features.clip import ClipGridEncoder, build_tower, load_standardization, resolve_weights
        from vlcli.features.images import Preprocess

        folder = data_path(self.settings, CLIP_FOLDER.get(self.task, "coco.clip"))
        manifest_path = folder / "manifest.json" if folder.suffix != ".h5" else folder.with_suffix(".manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise PredictError(f"{manifest_path}: the run's CLIP features have no readable extraction manifest, so "
                               "the extractor settings are unknown; extract the image with `vlcli extract-features` "
                               "and pass it with --features") from None
        weights = manifest.get("weights") or {}
        if weights.get("source") == "random":
            resolved = resolve_weights(self.feature_type, None, random_init=True, seed=int(weights.get("seed", 0)))
        else:
            resolved = resolve_weights(self.feature_type, weights.get("path") or weights.get("tag"), random_init=False)
        tower, info = build_tower(self.feature_type, resolved)
        size = int(manifest["image_size"])
        encoder = ClipGridEncoder(tower, size).eval()
        resize = (manifest.get("preprocessing") or {}).get("resize", "squash")
        preprocess = Preprocess(size, resize, info["mean"], info["std"])
        shift = scale = None
        if manifest.get("standardize"):
            shift, scale = load_standardization(manifest_path.parent / manifest["standardize"]["file"])
        self._encoder = (encoder, preprocess, shift, scale, np.dtype(manifest.get("dtype", "float16")))
        return self._encoder


class _PixelStore:
    """Images in memory through the run's evaluation transform (what ``ImageStore`` gives a raw_* run)."""

    def __init__(self, settings: Any, task: str, images: Mapping[str, Any]) -> None:
        from vlcli.data.images import image_transform

        transform = image_transform(settings, task, train=False)
        self._items = {k: transform(img).numpy() for k, img in images.items()}
        self.feat_dim = 3

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._items[image_id], np.zeros((0, 4), np.float32)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._items

    def ids(self) -> Iterable[str]:
        return list(self._items)

    def store_for(self, image_id: str) -> Any:
        return self


def read_items(path: Path) -> list[dict[str, Any]]:
    """``--input`` JSONL: one ``{"image": path, "question"|"text": ...}`` per line (paths relative to the file)."""
    items: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(f"--input {path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise PredictError(f"--input {path} line {number}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise PredictError(f"--input {path} line {number}: expected an object with an \"image\" path")
        image = Path(item["image"]).expanduser()
        item["image"] = str(image if image.is_absolute() else path.parent / image)
        items.append(item)
    if not items:
        raise PredictError(f"--input {path}: no items")
    return items


__all__: list[Hashable] = ["Predictor", "PredictError", "read_items"]
