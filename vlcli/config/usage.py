"""Which settings each command uses, and the warning for the ones a user gave that it does not.

Every settings field is accepted by every command (one shared model), but a field a command never
reads must not pass silently: ``unused_warning`` names them (rule R51). ``tests/test_flags.py`` walks
every command x every field against this table, so a new field or command cannot be forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vlcli.config.settings import FIELDS
from vlcli.errors import Issue

OPTIMISATION = frozenset({
    "train", "train_topk", "optim", "warmup_ratio", "weight_decay", "clip_grad_norm", "gradient_accumulation_steps",
    "lr", "vis_lr", "vis_weight_decay", "adam_eps", "adam_beta1", "adam_beta2", "epochs", "dropout",
    "log_train_accuracy", "dry", "resume", "overwrite", "save_full", "best_metric", "sync_every", "compile",
    "frozen_dtype",
    "report_to", "run_name", "comment", "multitask_sampling", "use_separate_optimizer_for_visual",
    "use_adam_for_visual", "use_data_augmentation", "augment_hflip", "from_scratch", "deepspeed", "fsdp", "init_task_map",
    "shuffle_boxes", "freeze_bn_statistics", "freeze_ln_statistics", "track_z", "lambda_z",
})
"""Read only while training (the optimiser, the schedule, the run directory, training-time data options)."""

PRETRAINING = frozenset({
    "losses", "word_mask_rate", "obj_mask_rate", "n_ground", "ground_upsample", "ground_weight", "caption_only",
    "coco_only", "caption_cocoonly", "itm_cocoonly", "single_vqa_prefix", "oscar_tags", "load_lxmert_qa",
})
"""Read only by `vlcli pretrain` (its objectives and data mix)."""

FINETUNING = frozenset({"test", "submit", "test_only", "testing", "classifier", "test_answerable"})
"""Read by fine-tuning and by evaluating / submitting a fine-tuned checkpoint, not by pretraining."""

EXTRACTION = frozenset({"feature_type", "image_size", "batch_size", "num_workers", "seed", "clip_weights",
                        "clip_random_init", "fp16"})
"""What `vlcli extract-features` reads from the settings (the rest of its options are its own)."""

ALL = frozenset(FIELDS)
USED_BY: dict[str, frozenset[str]] = {
    "inspect-config": ALL,  # shows every value
    "finetune": ALL - PRETRAINING,
    "pretrain": ALL - FINETUNING,
    "eval": ALL - OPTIMISATION - PRETRAINING - {"submit"},
    "submit": ALL - OPTIMISATION - PRETRAINING - {"test", "test_only", "testing"},
    "extract-features": EXTRACTION,
    "convert": frozenset(),  # takes no settings (its options are its own)
    "demo-data": frozenset(),
    "runs": frozenset(),
    "export": frozenset(),
    "predict": frozenset(),  # reads the run's own config.json; its options are its own
}


def unused(command: str, given: Iterable[str]) -> list[str]:
    """The given field names that ``command`` never reads (in settings order)."""
    used = USED_BY.get(command, ALL)
    names = set(given)
    return [name for name in FIELDS if name in names and name not in used]


def unused_warning(command: str, sources: Mapping[str, str]) -> Issue | None:
    """One warning naming every field set on the command line that ``command`` ignores (profiles are bundles
    of a whole recipe, so their training values are not reported when they are used to evaluate)."""
    given = [name for name, source in sources.items() if source == "cli"]
    names = unused(command, given)
    if not names:
        return None
    why = {"extract-features": "it reads only " + ", ".join(f"--{n}" for n in sorted(EXTRACTION)),
           "eval": "training-only", "submit": "training-only"}.get(command, f"not read by `vlcli {command}`")
    return Issue("R51", "warning", f"{', '.join('--' + n for n in names)} ignored by `vlcli {command}` ({why})",
                 tuple(names))
