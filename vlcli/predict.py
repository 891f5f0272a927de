"""Run a trained model on your own images: :class:`Predictor` (``api.Predictor``) and ``vlcli predict``.

The run directory says everything: its ``config.json`` rebuilds the settings, ``BEST`` (or another
checkpoint) is loaded exactly, and the image becomes the model's visual input the way the run saw it:

* CLIP grid runs (RN50, RN101, RN50x4, ViT): the grid features are extracted in-process with the settings
  recorded in the ``manifest.json`` of the run's feature folder (tower weights or random-init seed, image
  size, resize, the per-channel standardisation), then rounded to the stored dtype, as ``extract-features``
  did; ``features=`` names that folder (or its manifest) when the run's data root is not on this machine;
* ``raw_*`` runs: the model's own image encoder reads the pixels through the run's evaluation transform;
* BUTD runs: the region features come from a detector vlcli does not have; give a precomputed BUTD h5
  with ``features=`` (the image is looked up by id: its file stem, or ``image_id``).

Inputs go through the task's own dataset and collate, and answers through the task's own ``predict``,
so a prediction here is the one ``vlcli eval`` makes for the same image and question.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlcli.errors import VlcliError

QUESTION_TASKS = ("vqa", "gqa")
CAPTION_TASKS = ("caption",)
SUPPORTED = QUESTION_TASKS + CAPTION_TASKS
CLIP_FOLDERS = {"vqa": ("coco.clip",), "caption": ("coco.clip",), "gqa": ("vg.clip", "gqa.clip")}
"""The data paths whose feature folder (and its extraction manifest) a task's CLIP run read."""
CHECKPOINT_SUFFIXES = (".safetensors", ".pth")
SCALARS = (str, int, float, bool)


class PredictError(VlcliError):
    """A prediction cannot be made: a bad run, checkpoint, image, task or input file."""


def _label(item: Mapping[str, Any], flag: str, key: str) -> str:
    """How an error names an item's field: ``--image`` for the CLI's one item, ``--input F line N: image``
    for a JSONL line, ``image`` through the Python API."""
    where = item.get("_where")
    if where == "cli":
        return flag
    return f"{where}: {key}" if where else key


def _open_image(item: Mapping[str, Any]) -> Any:
    """The item's image as RGB: a PIL image as given, a path read (one-line errors for missing / unreadable)."""
    from PIL import Image, UnidentifiedImageError

    image = item.get("image")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(str(image)).expanduser()
    label = _label(item, "--image", "image")
    if not path.is_file():
        raise PredictError(f"{label} {path}: no such file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise PredictError(f"{label} {path}: not a readable image ({exc}); give a JPEG or PNG file") from None


def _device(device: str) -> torch.device:
    from vlcli.features.clip import resolve_device

    return resolve_device(device)


def _split_load(run_dir: Path, checkpoint: str) -> tuple[Path, str]:
    """``--load RUN`` or ``--load RUN/BEST[.safetensors]`` -> (run directory, checkpoint)."""
    if run_dir.is_dir():
        return run_dir, checkpoint
    named = run_dir if run_dir.suffix in CHECKPOINT_SUFFIXES else run_dir.with_name(run_dir.name + ".safetensors")
    if named.is_file():
        if checkpoint != "BEST":
            raise PredictError(f"--load {run_dir} names a checkpoint and --checkpoint {checkpoint} another; give one")
        return named.parent, str(named)
    return run_dir, checkpoint


def _checkpoint_file(run: Path, checkpoint: str) -> Path:
    """``BEST`` / ``LAST`` / ``EpochNN`` of the run, or a checkpoint file."""
    given = Path(checkpoint).expanduser()
    path = given if given.suffix in CHECKPOINT_SUFFIXES else run / f"{checkpoint}.safetensors"
    if not path.is_file():
        have = sorted(p.name.removesuffix(".safetensors") for p in run.glob("*.safetensors"))
        raise PredictError(f"--checkpoint {checkpoint}: {path} does not exist; the run has "
                           f"{', '.join(have) or 'no checkpoint'} (BEST, LAST, EpochNN or a checkpoint file)")
    return path


class Predictor:
    """A trained run, ready to answer questions about (or caption) images.

    ``task`` picks one task of a multitask run; ``features`` is a BUTD run's precomputed region h5, or a CLIP
    run's extraction folder / manifest when the run's data root does not hold it."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "BEST", device: str = "cpu", task: str | None = None,
                 features: str | Path | None = None) -> None:
        from vlcli import api
        from vlcli.config.resolve import settings_from_run_config

        self.run, checkpoint = _split_load(Path(run_dir).expanduser(), checkpoint)
        config = self.run / "config.json"
        if not config.is_file():
            raise PredictError(f"--load {self.run}: no config.json; give a run directory written by vlcli finetune")
        self.settings = settings_from_run_config(config)
        self.task = self._pick_task(task)
        self.device = _device(device)
        self.feature_type = str(self.settings.get("feature_type"))
        self._visual = _VisualInput(self.settings, self.task, features, self.device)
        self.checkpoint = _checkpoint_file(self.run, checkpoint)
        self.tokenizer = api.build_tokenizer(self.settings)
        self.model = api.build_model(self.settings, tokenizer=self.tokenizer)
        api.load_checkpoint(self.model, self.checkpoint, settings=self.settings)  # exact: no partial loading
        self.model.to(self.device).eval()

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
        answers and their probabilities under the model, most likely first (see :meth:`_topk`)."""
        if self.task not in QUESTION_TASKS:
            raise PredictError(f"the run's task is {self.task}: use caption(image)")
        result = self.predict([{"image": image, "question": question}], topk=topk)[0]
        return result["topk"] if topk else result["answer"]

    def caption(self, image: Any) -> str:
        """The caption of ``image`` (a path or a PIL image), generated as the run's evaluation does."""
        if self.task not in CAPTION_TASKS:
            raise PredictError(f"the run's task is {self.task}: use answer(image, question)")
        return self.predict([{"image": image}])[0]["answer"]

    def visual_input(self, image: Any) -> np.ndarray:
        """What the model reads for ``image``: CLIP grid features (tokens, dim) as stored by extract-features,
        a raw run's pixels (3, S, S), or a BUTD image's region features (``image`` names its id)."""
        item = {"image": image}
        image_id = self._visual.image_id(item, 0)
        return self._visual.store({image_id: item}).get(image_id)[0]

    def predict(self, items: Sequence[Mapping[str, Any]], topk: int | None = None,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"image", "question"|"text"[, "image_id"]}]`` -> the items with ``"answer"`` (and ``"topk"``:
        ``[(answer, probability)]``) added, in order, ``batch_size`` at a time."""
        if topk is not None and topk < 1:
            raise PredictError(f"--topk {topk}: give 1 or more")
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            out += self._batch(list(items[start : start + batch_size]), topk)
        return out

    # ------------------------------------------------------------------------------------ internals

    def _batch(self, items: list[Mapping[str, Any]], topk: int | None) -> list[dict[str, Any]]:
        from vlcli.tasks import get_task
        from vlcli.tasks.base import Example

        task = get_task(self.task)
        texts = [self._text(task, item) for item in items]  # input errors before any image work
        ids = [self._visual.image_id(item, i) for i, item in enumerate(items)]
        store = self._visual.store(dict(zip(ids, items, strict=True)))
        examples = [Example(id=i, image_ids=(ids[i],), text=texts[i]) for i in range(len(items))]
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
            row = {k: (str(v) if isinstance(v, Path) else v) for k, v in item.items()
                   if not k.startswith("_") and (isinstance(v, (*SCALARS, Path)) or v is None)}
            row["answer"] = answers[i]
            if ranked is not None:
                row["topk"] = ranked[i]
            results.append(row)
        return results

    def _text(self, task: Any, item: Mapping[str, Any]) -> str:
        """The task's model input: the caption prompt, or the question in the task's prompt."""
        question = item.get("question", item.get("text"))
        if self.task in CAPTION_TASKS:
            if question is not None:
                raise PredictError(f"{_label(item, '--question', 'question')}: a caption run captions the image "
                                   "and takes no question; drop it")
            return task.caption_input(self.settings)
        if not isinstance(question, str) or not question.strip():
            raise PredictError(f"{_label(item, '--question', 'question')}: a {self.task} run answers a question "
                               "about the image; give one")
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
        """The K most likely answers per input: beam search (2K beams, 2K returned) proposes candidates, each
        distinct answer is scored with its exact probability P(answer | image, text), the K best are kept."""
        width = max(2 * k, 2)
        visual = {"vis_attention_mask": batch["vis_attention_mask"]} if "vis_attention_mask" in batch else {}
        ids = self.model.generate(batch["input_ids"], batch["attention_mask"], batch["vis_feats"], batch["vis_pos"],
                                  task=self.task, num_beams=width, num_return_sequences=width,
                                  max_length=task.run(self.settings).gen_max_length, **visual)
        texts = self.tokenizer.decode_many(ids)
        ranked: list[list[tuple[str, float]]] = []
        for row in range(batch["input_ids"].shape[0]):
            candidates = [t for t in dict.fromkeys(texts[row * width : (row + 1) * width]) if t.strip()]
            probs = self._probabilities(batch, row, candidates) if candidates else []
            ranked.append(sorted(zip(candidates, probs, strict=True), key=lambda x: -x[1])[:k])
        return ranked

    def _probabilities(self, batch: dict[str, Any], row: int, candidates: list[str]) -> list[float]:
        """P(answer | image, question) of each candidate under the model: the product of its token
        probabilities (end token included), teacher-forced."""
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


@dataclass
class _Extractor:
    """The CLIP grid extractor of a run, as its extraction manifest records it."""

    encoder: Any
    preprocess: Any
    shift: torch.Tensor | None
    scale: torch.Tensor | None
    dtype: np.dtype


class _VisualInput:
    """Turns images into the run's visual input (see the module docstring)."""

    def __init__(self, settings: Any, task: str, features: str | Path | None, device: torch.device) -> None:
        from vlcli.config.derive import GRID_FEAT_DIM

        self.settings, self.task, self.device = settings, task, device
        self.feature_type = str(settings.get("feature_type"))
        self.features = Path(features).expanduser() if features is not None else None
        self.grid = self.feature_type in GRID_FEAT_DIM
        self.raw = self.feature_type.startswith("raw_")
        self.butd = not (self.grid or self.raw)
        if self.features is not None and not self.features.exists():
            raise PredictError(f"--features {self.features}: no such file")
        if self.raw and self.features is not None:
            raise PredictError(f"--features {self.features}: a {self.feature_type} run reads the image's pixels "
                               "itself; drop --features")
        if self.butd and self.features is None:
            raise PredictError("this run reads BUTD region features, which need a Faster R-CNN detector vlcli does "
                               "not have; give the image's precomputed BUTD features with --features FILE.h5 "
                               "(the image is looked up by its file stem or --image_id)")
        self.manifest = self._find_manifest() if self.grid else None
        self._extractor: _Extractor | None = None

    def image_id(self, item: Mapping[str, Any], index: int) -> str:
        """The key of the item's image: ``image_id`` or the file stem for a BUTD h5, else the item's index."""
        if item.get("image_id") is not None and not self.butd:
            raise PredictError(f"{_label(item, '--image_id', 'image_id')}: looks an image up in a BUTD --features "
                               f"file; a {self.feature_type} run reads the image itself, drop it")
        if not self.butd:
            return f"image{index}"
        if item.get("image_id") is not None:
            return str(item["image_id"])
        image = item.get("image")
        if not isinstance(image, (str, Path)):
            raise PredictError(f"{_label(item, '--image_id', 'image_id')}: a BUTD run looks the image up in "
                               "--features by its file stem; give a path or the image id")
        return Path(image).stem

    def store(self, items: Mapping[str, Mapping[str, Any]]) -> Any:
        """A feature store holding the visual input of each ``{image_id: item}``."""
        from vlcli.data.features import ArrayStore, BUTDStore

        if self.butd:
            n_boxes = self.settings.get("max_n_boxes" if self.task == "caption" else "n_boxes")
            store = BUTDStore(self.features, n_boxes=int(n_boxes), feat_dim=None)
            for image_id, item in items.items():
                if image_id not in store:
                    raise PredictError(f"--features {self.features}: no image {image_id!r} in the file; "
                                       f"pass its id with {_label(item, '--image_id', 'image_id')}")
            return store
        images = {k: _open_image(item) for k, item in items.items()}
        if self.raw:
            return _PixelStore(self.settings, self.task, images)
        return ArrayStore(dict(zip(images, self._grid_features(list(images.values())), strict=True)))

    def _grid_features(self, images: list[Any]) -> list[np.ndarray]:
        """CLIP grids of ``images`` in one batch, standardised and rounded to the stored dtype."""
        ex = self._extractor or self._build_extractor()
        pixels = torch.stack([ex.preprocess(image) for image in images]).to(self.device)
        with torch.no_grad():
            grid = ex.encoder(pixels)[0].float()
        if ex.shift is not None:
            grid = (grid - ex.shift) / ex.scale
        return list(grid.cpu().numpy().astype(ex.dtype).astype(np.float32))

    def _find_manifest(self) -> Path:
        """The extraction manifest of the run's CLIP features (``--features`` or the run's data root)."""
        from vlcli.data.layout import data_path

        if self.features is not None:
            f = self.features
            candidates = [f] if f.suffix == ".json" else [f / "manifest.json", f.with_suffix(".manifest.json")]
        else:
            folders = [data_path(self.settings, name) for name in CLIP_FOLDERS[self.task]]
            candidates = [p.with_suffix(".manifest.json") if p.suffix == ".h5" else p / "manifest.json" for p in folders]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise PredictError(f"{candidates[0]}: no CLIP extraction manifest, so this run's extractor settings are "
                               "unknown; pass the folder `vlcli extract-features` wrote for the run's features (or "
                               "its manifest.json) with --features")
        return found

    def _build_extractor(self) -> _Extractor:
        """Tower, preprocessing and standardisation as the manifest records them."""
        from vlcli.features.clip import ClipGridEncoder, build_tower, load_standardization, resolve_weights
        from vlcli.features.images import Preprocess

        path = self.manifest
        manifest = _read_manifest(path, self.feature_type)
        weights = manifest.get("weights") or {}
        if weights.get("source") == "random":
            resolved = resolve_weights(self.feature_type, None, random_init=True, seed=int(weights.get("seed") or 0))
        else:
            resolved = resolve_weights(self.feature_type, weights.get("path") or weights.get("tag"), random_init=False)
        tower, info = build_tower(self.feature_type, resolved)
        size = int(manifest["image_size"])
        encoder = ClipGridEncoder(tower, size).to(self.device).eval()
        resize = (manifest.get("preprocessing") or {}).get("resize", "squash")
        shift = scale = None
        if manifest.get("standardize"):
            stats = _standardization_file(path, manifest["standardize"])
            shift, scale = (t.to(self.device) for t in load_standardization(stats))
        self._extractor = _Extractor(encoder, Preprocess(size, resize, info["mean"], info["std"]), shift, scale,
                                     np.dtype(manifest.get("dtype", "float16")))
        return self._extractor


def _read_manifest(path: Path, feature_type: str) -> dict[str, Any]:
    """An extraction manifest that describes ``feature_type`` grids (one-line errors otherwise)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PredictError(f"{path}: not a readable extraction manifest ({exc}); re-run vlcli extract-features") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("image_size"), int):
        raise PredictError(f"{path}: not an extraction manifest (no image_size); give the one extract-features wrote")
    if manifest.get("feature_type") != feature_type:
        raise PredictError(f"{path}: describes {manifest.get('feature_type')} features but the run reads "
                           f"{feature_type}; give the manifest of the run's own features")
    return manifest


def _standardization_file(manifest: Path, record: Mapping[str, Any]) -> Path:
    """The standardisation copied beside the manifest, checked against the sha256 the manifest recorded."""
    path = manifest.parent / str(record.get("file"))
    if not path.is_file():
        raise PredictError(f"{path}: the standardisation the features were written with is missing; re-extract")
    if record.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
        raise PredictError(f"{path}: differs from the standardisation {manifest} records (sha256); re-extract")
    return path


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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(f"--input {path}: cannot read it ({exc})") from None
    items = [_item(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise PredictError(f"--input {path}: no items (one JSON object per line)")
    return items


def _item(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"--input {path} line {number}"
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise PredictError(f"{where}: not JSON ({exc})") from None
    if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
        raise PredictError(f"{where}: expected an object with an \"image\" path")
    for key in ("question", "text", "image_id"):
        if key in item and not isinstance(item[key], str):
            raise PredictError(f"{where}: \"{key}\" must be a string")
    image = Path(item["image"]).expanduser()
    item["image"] = str(image if image.is_absolute() else path.parent / image)
    item["_where"] = where
    return item


__all__ = ["PredictError", "Predictor", "read_items"]
