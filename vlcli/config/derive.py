"""Values derived from the settings, computed in exactly one place.

* ``feat_dim`` from ``feature_type`` (spec rule R16);
* the task list and whether the run is multitask;
* per-task batch sizes, text lengths and prompts (spec data-and-eval §7);
* the evaluation batch size default, the backbone family and hidden size, the resolved checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from vlcli.config.settings import Derived, Settings, TaskRun
from vlcli.model.presets import backbone_info

# Grid feature size of each CLIP visual tower (layer-4 grid for ResNets, patch tokens for ViT).
GRID_FEAT_DIM = {"RN50": 2048, "RN101": 2048, "RN50x4": 2560, "ViT": 768}
# Size of the attention-pooled vector (vis_pooling_output); ViT has no pooled output here.
POOLED_FEAT_DIM = {"RN50": 1024, "RN101": 512, "RN50x4": 640}
PRECOMPUTED_CLIP = tuple(GRID_FEAT_DIM)
RAW_TYPES = ("raw_RN50", "raw_RN101", "raw_RN50x4", "raw_ViT")
FEATURE_TYPES = ("butd", *PRECOMPUTED_CLIP, *RAW_TYPES)

TASK_PROMPTS = {
    "vqa": "vqa: ",
    "gqa": "gqa: ",
    "nlvr": "nlvr: ",
    "refcoco": "visual grounding: ",
    "vcr": "",
    "caption": "caption: ",
    "cls": "cls: ",
    "pretrain": "",  # every pretraining objective has its own prefix (spec data-and-eval §1.8)
}
LEGACY_GQA_PROMPT = "gpa: "  # the original's typo, kept for checkpoints trained with it

# Multitask batch size of each task: a fraction of batch_size, or a fixed size (spec §7).
MULTITASK_BATCH = {
    "vqa": ("scale", 1, 1),
    "gqa": ("scale", 100, 60),
    "nlvr": ("scale", 20, 60),
    "caption": ("scale", 50, 60),
    "cls": ("scale", 1, 1),
    "refcoco": ("fixed", 80, 1),
    "vcr": ("fixed", 3, 1),
}
# Input / generation lengths of tasks that need more than the global default.
TASK_TEXT_LENGTH = {"refcoco": 30, "vcr": 100, "caption": 40}
TASK_GEN_LENGTH = {"caption": 40}


def base_feature_type(feature_type: str) -> str:
    """``raw_RN101`` -> ``RN101``; other names unchanged."""
    return feature_type[4:] if feature_type.startswith("raw_") else feature_type


def feat_dim_for(feature_type: str, pooled: bool, given: int) -> int | None:
    """Visual feature size implied by ``feature_type`` (None when it has none, e.g. pooled ViT)."""
    if feature_type == "butd":
        return given
    base = base_feature_type(feature_type)
    table = POOLED_FEAT_DIM if pooled else GRID_FEAT_DIM
    return table.get(base)


def task_prompt(settings: Settings, task: str, explicit: set[str], multitask: bool) -> str:
    """The text prefix of ``task``'s inputs."""
    ds = settings.dataset
    if ds.use_tasks_prompts:
        if task == "gqa" and ds.legacy_gqa_prompt:
            return LEGACY_GQA_PROMPT
        return TASK_PROMPTS.get(task, "")
    if "prompt" in explicit:
        return ds.prompt
    # Without an explicit prompt: multitask runs use none (as the original), single-task runs use
    # the task's own prompt instead of leaking "vqa: " into every task (a bug of the original).
    return "" if multitask else TASK_PROMPTS.get(task, ds.prompt)


def derive(
    settings: Settings,
    explicit: set[str],
    load_path: Path | None = None,
    run_config: Path | None = None,
) -> Derived:
    """Compute :class:`Derived` for validated ``settings``; ``explicit`` = names set by the user."""
    tr, ds, md = settings.train, settings.dataset, settings.model
    tasks = list(settings.multitask.tasks)
    multitask = len(tasks) > 1
    valid_bs = tr.valid_batch_size if tr.valid_batch_size is not None else tr.batch_size
    per_task: dict[str, TaskRun] = {}
    for task in tasks:
        if multitask and task in MULTITASK_BATCH:
            kind, num, den = MULTITASK_BATCH[task]
            bs = num if kind == "fixed" else tr.batch_size * num // den
            vbs = num if kind == "fixed" else valid_bs * num // den
        else:
            bs, vbs = tr.batch_size, valid_bs
        text_len = ds.max_text_length if "max_text_length" in explicit else TASK_TEXT_LENGTH.get(task, ds.max_text_length)
        gen_len = (
            settings.inference.gen_max_length
            if "gen_max_length" in explicit
            else TASK_GEN_LENGTH.get(task, settings.inference.gen_max_length)
        )
        per_task[task] = TaskRun(
            batch_size=max(bs, 1),
            valid_batch_size=max(vbs, 1),
            max_text_length=text_len,
            gen_max_length=gen_len,
            prompt=task_prompt(settings, task, explicit, multitask),
        )
    info = backbone_info(md.backbone)
    feat_dim = feat_dim_for(ds.feature_type, settings.visual.vis_pooling_output, md.feat_dim)
    return Derived(
        feat_dim=feat_dim if feat_dim is not None else md.feat_dim,
        tasks=tasks,
        multitask=multitask,
        per_task=per_task,
        valid_batch_size=valid_bs,
        backbone_family=info.family if info else None,
        d_model=info.d_model if info else None,
        load_path=str(load_path) if load_path is not None else None,
        run_config=str(run_config) if run_config is not None else None,
        explicit=sorted(explicit),
    )
