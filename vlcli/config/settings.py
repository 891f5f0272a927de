"""The one settings model shared by every command.

Every argument of the configuration reference (plus ``seed``, ``max_text_length``,
``use_tasks_prompts``, ``load_lxmert_qa`` and a few vlcli additions) is a field of exactly one
section model. Defaults are the original's ``param.py`` defaults (spec column "P"), except where the
docs say otherwise. Profiles, the command line and saved run configs are *flat* ``{name: value}``
dictionaries; :data:`FIELDS` maps each name to its section.

Derived values (effective ``feat_dim``, task list, per-task batch sizes and text lengths, resolved
checkpoint) live in :class:`Derived` and are computed in one place, :func:`vlcli.config.derive.derive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vlcli.config.types import Bool, ImageSize, OptInt, OptStr, PathMap, TaskList, TopK, Workers


def F(default: Any, description: str) -> Any:  # noqa: N802 - reads like a declaration
    """A field with its one-line description."""
    return Field(default=default, description=description)


class Section(BaseModel):
    """Base of all sections: unknown keys are rejected, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)


class TrainSettings(Section):
    """Run, data splits, checkpoints, hardware and optimisation."""

    seed: int = F(9595, "Seed for torch, numpy and random (data subsets, sampling, initialisation).")
    train: str = F("train", "Training split name(s), comma-separated (single-task runs).")
    valid: str = F("valid", "Validation split name (single-task runs).")
    test: OptStr = F(None, "Test split name; none skips testing (single-task runs).")
    test_only: Bool = F(False, "Skip training and only evaluate/predict with the `load` checkpoint.")
    submit: Bool = F(False, "Also predict the leaderboard split and write the submission file.")
    train_topk: TopK = F(-1, "Subset of training data: N = first N examples, 0<x<=1 = seeded fraction, -1 = all.")
    valid_topk: TopK = F(-1, "Subset of validation/test data, same forms as train_topk.")
    multiGPU: Bool = F(False, "Compatibility flag of the original; DDP is automatic under torchrun.")  # noqa: N815
    fp16: Bool = F(False, "Mixed precision in float16 with a gradient scaler (bf16 is the GPU default).")
    distributed: Bool = F(False, "Compatibility flag: require a distributed launch (torchrun / accelerate).")
    num_workers: Workers = F("auto", "DataLoader worker processes: a count, or auto (the default: CPU cores per process - 1, at most 8; 0 on CPU-only runs). The reference default 0 is accepted.")
    local_rank: int = F(-1, "Process rank set by the launcher; -1 = taken from the environment.")
    output: str = F("snap/test", "Run directory: config, metrics, checkpoints, predictions, submissions.")
    load: OptStr = F(None, "Checkpoint to start from: run dir (BEST, else LAST), file with/without extension, or auto.")
    load_lxmert_qa: OptStr = F(None, "Legacy argument of the original; only recorded, never loaded.")
    from_scratch: Bool = F(False, "Randomly re-initialise the backbone instead of using pretrained weights.")
    run_name: str = F("", "Run name for logs and trackers; empty = automatic from the output folder, date and comment.")
    report_to: str = F("none", "Experiment tracking: none, tensorboard, wandb (comma-separated for several); rank 0 only.")
    sync_every: int = F(20, "Optimiser steps between host syncs (non-finite-loss check, loss logging); a NaN loses at most this many steps.")
    compile: Bool = F(False, "torch.compile the model for training (falls back to eager with a warning where it fails).")
    frozen_dtype: str = F("fp32", "Storage of the frozen weights: fp32, or bf16 when training in bf16 (a GPU): half their memory.")
    prefetch: int = F(4, "Batches each DataLoader worker prepares ahead (with num_workers > 0; workers persist across epochs).")
    comment: str = F("", "Free text appended to the automatic run name.")
    batch_size: int = F(256, "Training batch size per process (multitask derives per-task sizes from it).")
    valid_batch_size: OptInt = F(None, "Evaluation batch size; none = batch_size.")
    optim: str = F("adamw", "Optimiser: adamw, adam, rms, adamax or sgd.")
    warmup_ratio: float = F(0.05, "Fraction of all optimiser steps used for linear learning-rate warm-up.")
    weight_decay: float = F(0.01, "Weight decay (never applied to biases and layer-norm weights).")
    clip_grad_norm: float = F(-1.0, "Clip the global gradient norm to this value; <= 0 disables clipping.")
    gradient_accumulation_steps: int = F(1, "Accumulate gradients over this many batches per optimiser step.")
    lr: float = F(1e-4, "Peak learning rate of all trainable parameters.")
    vis_lr: float = F(1e-4, "Learning rate of the in-model CLIP encoder when it has its own optimiser (see below).")
    vis_weight_decay: float = F(0.01, "Weight decay of the in-model CLIP encoder when it has its own optimiser.")
    adam_eps: float = F(1e-6, "Epsilon of Adam-type optimisers.")
    adam_beta1: float = F(0.9, "Adam beta1 (wired to the optimiser; unused in the original).")
    adam_beta2: float = F(0.999, "Adam beta2 (wired to the optimiser; unused in the original).")
    epochs: int = F(12, "Training epochs.")
    dropout: float = F(0.1, "Dropout of the language model (all of its dropout probabilities).")
    losses: str = F("lm,qa,itm,ground_caption,refer", "Pretraining objectives: lm, qa, itm, ground_caption, refer, caption.")
    log_train_accuracy: Bool = F(False, "Also report training accuracy (RefCOCOg, VCR).")
    dry: Bool = F(False, "Evaluate once before training.")
    deepspeed: OptStr = F(None, "Train through DeepSpeed: zero2, zero3 or a DeepSpeed JSON config (needs the [deepspeed] extra).")
    fsdp: Bool = F(False, "Shard parameters, gradients and optimiser state with FSDP2 (full fine-tuning / pretraining of large backbones).")
    save_full: Bool = F(False, "Save every weight in checkpoints instead of only the trained ones.")
    allow_partial_load: Bool = F(False, "Load a --load checkpoint whose keys do not all match; list what was skipped.")
    init_task_map: OptStr = F(None, "Warm start: per-task modules of a --load checkpoint to rename, SRC=DST[,SRC=DST] (pretrain=vqa).")
    resume: Bool = F(False, "Continue the interrupted run in --output from LAST (weights, optimiser, schedule, RNG, position).")
    overwrite: Bool = F(False, "Replace the run already in --output (finetune/pretrain); without it an existing run is refused.")
    best_metric: str = F("average", "What selects BEST: average (of each task's primary metric), TASK, or TASK/METRIC.")


class DatasetSettings(Section):
    """Data, text inputs, prompts and task-specific data options."""

    data_root: str = F("datasets", "Root folder of the data in the original layout.")
    data_paths: PathMap = F({}, "Overrides of single data paths: NAME=PATH,... (names in docs/data.md).")
    demo_world: Bool = F(False, "Create the synthetic demo world (data, CLIP features, tiny backbones) in data_root if missing.")
    use_tasks_prompts: Bool = F(False, "Prefix each task's input with its own task prompt (\"vqa: \", \"gqa: \", ...).")
    legacy_gqa_prompt: Bool = F(False, "Use the original's GQA task prompt \"gpa: \" (for checkpoints trained with it).")
    max_text_length: int = F(20, "Maximum input length in tokens (tasks with longer inputs override it).")
    n_ground: int = F(1, "Grounding captions per pretraining example.")
    word_mask_rate: float = F(0.15, "Fraction of words masked for the pretraining lm objective.")
    obj_mask_rate: float = F(0.15, "Object mask rate of the original; accepted, unused.")
    caption_only: Bool = F(False, "Pretraining: use caption data only.")
    coco_only: Bool = F(False, "Pretraining: use COCO images only.")
    caption_cocoonly: Bool = F(True, "Pretraining: caption objective on COCO images only.")
    itm_cocoonly: Bool = F(True, "Pretraining: image-text matching on COCO images only.")
    ground_upsample: int = F(1, "Pretraining: repeat grounding examples this many times.")
    ground_weight: int = F(1, "Pretraining: loss weight of grounding examples.")
    single_vqa_prefix: Bool = F(False, "Pretraining: one shared prefix for all QA datasets.")
    do_lower_case: Bool = F(False, "Lower-case text before tokenisation.")
    oscar_tags: Bool = F(False, "Captioning input = \"describe image with tags:\" + detected object names (BUTD).")
    prefix: OptStr = F(None, "Captioning input prefix: none (= prompt), span, denoise or mask.")
    no_prefix: Bool = F(False, "Captioning input is empty.")
    prompt: str = F("vqa: ", "Text prefix of task inputs (replaced per task with use_tasks_prompts).")
    post_prompt: str = F("", "Text suffix of task inputs.")
    feature_type: str = F("butd", "Visual input: butd, RN50, RN101, RN50x4, ViT (precomputed) or raw_RN50, raw_RN101, raw_RN50x4.")
    raw_label: Bool = F(False, "VQA: train on one of the ten raw human answers.")
    answer_normalize: Bool = F(False, "VQA: normalise answers as the official evaluator does.")
    classifier: Bool = F(False, "VQA: answer classifier head with BCE instead of generation (single-task).")
    test_answerable: Bool = F(False, "Original argument; accepted, unused.")
    RefCOCO_GT: Bool = F(False, "RefCOCOg: candidate boxes from ground truth instead of detections.")  # noqa: N815
    RefCOCO_BUTD: Bool = F(False, "Original argument; accepted, unused.")  # noqa: N815
    shuffle_boxes: Bool = F(False, "RefCOCOg: shuffle candidate boxes during training.")
    vis_pointer: Bool = F(False, "Original argument; accepted, unused.")
    cls_task: str = F("tinyimagenet", "Classification dataset.")


class ModelSettings(Section):
    """Backbone and visual input pipeline."""

    backbone: str = F("t5-base", "Hub name or local directory of a T5 or BART checkpoint.")
    tokenizer: OptStr = F(None, "Tokenizer name or path; none = the backbone's.")
    feat_dim: int = F(2048, "Visual feature size; derived from feature_type for CLIP features.")
    pos_dim: int = F(4, "Box coordinates per visual token (must be 4).")
    image_size: ImageSize = F((448, 448), "Raw image size H,W for raw_* features (square, multiple of 32).")
    use_vision: Bool = F(True, "Feed visual features to the encoder.")
    use_vis_order_embedding: Bool = F(True, "Add image-order and object-order embeddings to visual tokens.")
    use_vis_layer_norm: Bool = F(True, "Layer norm(s) in the visual embedding.")
    individual_vis_layer_norm: Bool = F(True, "Separate layer norms on the feature and box branches.")
    share_vis_lang_layer_norm: Bool = F(False, "BART: apply layernorm_embedding to text and visual tokens jointly.")
    n_boxes: int = F(36, "Visual tokens per image (after reduction); BUTD boxes per image.")
    max_n_boxes: int = F(36, "Upper bound on boxes per image in caption loaders.")
    additional_visual_embedding_layers: int = F(0, "T5: extra Linear+ReLU(+LN) layers after the feature projection.")
    sparse_sample: Bool = F(False, "Training only: keep n_boxes random visual tokens.")
    downsample: Bool = F(False, "2-D max-pool the visual grid to floor(sqrt(n_boxes))^2 tokens.")
    oneddownsample: Bool = F(False, "1-D max-pool the visual tokens to n_boxes tokens.")
    expand_vis_embedding: Bool = F(False, "BART: expand each visual vector to n_image_tokens tokens.")
    n_image_tokens: int = F(4, "BART: tokens per visual vector with expand_vis_embedding.")
    vis_use_transformer: Bool = F(False, "BART: 2-layer transformer after the visual feature projection.")


class PeftSettings(Section):
    """Parameter-efficient methods and what is trained."""

    encoder_prompt_len: int = F(0, "Encoder prompt length; > 0 enables prompt tuning.")
    decoder_prompt_len: int = F(0, "Decoder prompt length (BART); > 0 enables decoder prompts.")
    use_single_prompt: Bool = F(False, "One prompt shared by all tasks instead of one per task.")
    mid_dim: int = F(768, "Hidden size of the prompt reparameterisation MLP.")
    use_attn_prefix: Bool = F(False, "Legacy prefix-tuning of the original; not supported.")
    unfreeze_language_model: Bool = F(False, "Full fine-tuning: train the whole encoder-decoder.")
    unfreeze_layer_norms: Bool = F(False, "Train every layer norm (T5's included).")
    unfreeze_lm_head: Bool = F(False, "Train the LM head and the tied token embedding.")
    use_adapter: Bool = F(False, "Bottleneck adapters.")
    use_hyperformer: Bool = F(False, "Hyperformer: adapters generated by task-conditioned hyper-networks.")
    use_compacter: Bool = F(False, "Compacter: PHM (Kronecker-sum) adapters.")
    use_lradapter: Bool = F(False, "Low-rank adapters (each projection a product of two rank-k factors).")
    use_single_adapter: Bool = F(False, "One adapter per slot shared by all tasks instead of one per task.")
    efficient_unique_hyper_net: Bool = F(False, "Hyperformer: one generator pair for all sublayers.")
    unique_hyper_net: Bool = F(False, "Hyperformer: one hyper-network per stack with per-sublayer generators.")
    projected_task_embedding_dim: int = F(-1, "Hyperformer projected task-embedding size; -1 = 64.")
    share_down_sampler: Bool = F(False, "Per-task adapters share the down projection (half-shared).")
    share_up_sampler: Bool = F(False, "Per-task adapters share the up projection (half-shared).")
    reduction_factor: int = F(16, "Adapter bottleneck size = d_model // reduction_factor.")
    add_adapter_cross_attn: Bool = F(True, "Also place adapters after decoder cross-attention.")
    add_layer_norm_before_adapter: Bool = F(False, "Layer norm on the adapter input.")
    add_layer_norm_after_adapter: Bool = F(False, "Layer norm on the adapter output, before the residual.")
    hypercomplex_division: int = F(4, "Compacter: number of Kronecker terms n.")
    phm_rank: int = F(1, "Compacter: rank of the factorised weights (factorized_phm).")
    shared_phm_rule: Bool = F(True, "Compacter: one PHM rule tensor for the whole model.")
    factorized_phm: Bool = F(True, "Compacter: low-rank factorised PHM weights.")
    phm_init_range: float = F(0.01, "Compacter: std of the PHM rule initialisation.")
    shared_phm_rule_over_tasks: Bool = F(False, "Compacter: per-task compacters share task 0's rule.")
    low_rank_rank: int = F(1, "Rank of the low-rank adapter factors.")
    use_lora: Bool = F(False, "LoRA on the q and v projections of every attention block.")
    lora_dim: int = F(4, "LoRA rank r.")
    lora_alpha: float = F(32, "LoRA scaling numerator (scale = lora_alpha / lora_dim).")
    use_single_lora: Bool = F(False, "One LoRA pair per linear shared by all tasks.")
    lora_train_biases: Bool = F(False, "Also train every bias with LoRA (the original did; part of the paper's 5.93%).")
    use_lm_head_adapter: Bool = F(False, "Parallel adapter on the output logits (BART).")
    track_z: Bool = F(False, "Add lambda_z * mean(z^2) of adapter bottleneck activations to the loss.")
    lambda_z: float = F(0.001, "Weight of the track_z penalty.")


class VisualEncoderSettings(Section):
    """The in-model CLIP encoder (raw_* feature types only)."""

    vis_pooling_output: Bool = F(False, "Use CLIP's pooled vector (one token per image) instead of the grid.")
    use_vis_adapter: Bool = F(False, "Adapters inside the CLIP ResNet blocks.")
    vis_adapter_type: str = F("middle-bottleneck", "Visual adapter positions-kind, e.g. middle-bottleneck, front-back-basic.")
    vis_reduction_factor: int = F(2, "Visual adapter bottleneck = channels // vis_reduction_factor.")
    remove_bn_vis_adapter: Bool = F(False, "No BatchNorm inside visual adapters.")
    unfreeze_vis_encoder: Bool = F(False, "Train the whole CLIP encoder.")
    unfreeze_vis_last_layer: Bool = F(False, "Train CLIP's last stage (layer4).")
    unfreeze_batch_norms: Bool = F(False, "Train every BatchNorm of the CLIP encoder.")
    freeze_bn_statistics: Bool = F(False, "Keep BatchNorm running statistics fixed during training.")
    freeze_ln_statistics: Bool = F(False, "Original flag; a no-op (layer norms keep no statistics).")
    use_separate_optimizer_for_visual: Bool = F(False, "Separate optimiser groups for the CLIP encoder (vis_lr, vis_weight_decay).")
    use_adam_for_visual: Bool = F(False, "With a separate visual group: AdamW (true) or SGD (false).")
    use_data_augmentation: Bool = F(False, "Random crop (reflect-padded) and erasing of raw training images; flips see augment_hflip.")
    augment_hflip: Bool = F(False, "With use_data_augmentation: also flip images horizontally in tasks whose text says left/right (all but cls).")
    clip_weights: OptStr = F(None, "CLIP weights of extract-features and raw_* types: an open_clip tag (default openai) or a local weight file (OpenAI .pt, open_clip checkpoint, .safetensors).")
    clip_random_init: Bool = F(False, "Random (seeded, meaningless) CLIP encoder weights: for tests and demos without the download.")


class InferenceSettings(Section):
    """Generation."""

    num_beams: int = F(1, "Beam size for generated answers and captions.")
    gen_max_length: int = F(20, "Maximum generated length (and caption target length).")


class MultitaskSettings(Section):
    """Task list and task interleaving."""

    tasks: TaskList = F([], "Tasks of the run (comma list); keys of every per-task module.")
    multitask_sampling: str = F(
        "proportional", "Task interleaving: proportional (the original's 'roundrobin'), roundrobin or balanced."
    )
    testing: Bool = F(False, "Multitask: also predict the VQA test-dev and GQA submit splits.")


SECTION_MODELS: dict[str, type[Section]] = {
    "train": TrainSettings,
    "dataset": DatasetSettings,
    "model": ModelSettings,
    "peft": PeftSettings,
    "visual": VisualEncoderSettings,
    "inference": InferenceSettings,
    "multitask": MultitaskSettings,
}

SECTION_TITLES: dict[str, str] = {
    "train": "Train",
    "dataset": "Dataset",
    "model": "Model",
    "peft": "PEFT",
    "visual": "Visual encoder",
    "inference": "Inference",
    "multitask": "Multitask",
}


@dataclass(frozen=True)
class FieldSpec:
    """What the CLI, profiles and docs need to know about one argument."""

    name: str
    section: str
    default: Any
    description: str
    is_bool: bool
    annotation: Any


def _collect_fields() -> dict[str, FieldSpec]:
    out: dict[str, FieldSpec] = {}
    for section, model in SECTION_MODELS.items():
        for name, info in model.model_fields.items():
            if name in out:
                raise RuntimeError(f"field {name} declared in two sections")
            default = model.model_validate({}).__dict__[name]
            is_bool = info.annotation is bool
            out[name] = FieldSpec(name, section, default, info.description or "", is_bool, info.annotation)
    return out


FIELDS: dict[str, FieldSpec] = _collect_fields()
"""Every argument, by its canonical (snake_case as in the reference) name."""

ALIASES: dict[str, str] = {
    "use_tasks_prompt": "use_tasks_prompts",
    "wordMaskRate": "word_mask_rate",
    "objMaskRate": "obj_mask_rate",
    "feature": "feature_type",
}
"""Other spellings accepted everywhere (the reference's and the original argparse's)."""


class TaskRun(BaseModel):
    """Per-task values derived from the global settings (spec data-and-eval §7)."""

    batch_size: int
    valid_batch_size: int
    max_text_length: int
    gen_max_length: int
    prompt: str


class Derived(BaseModel):
    """Values computed from the settings in one place (:func:`vlcli.config.derive.derive`)."""

    feat_dim: int
    tasks: list[str]
    multitask: bool
    per_task: dict[str, TaskRun]
    valid_batch_size: int
    backbone_family: str | None
    d_model: int | None
    load_path: str | None
    run_config: str | None
    # Names the user set (CLI, profiles, run config): recorded in a run's config.json so that a reload
    # derives per-task values (text lengths, prompts) exactly as the run did.
    explicit: list[str] = []


class Settings(BaseModel):
    """The validated configuration of one command invocation."""

    model_config = ConfigDict(extra="forbid")

    train: TrainSettings = Field(default_factory=TrainSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    peft: PeftSettings = Field(default_factory=PeftSettings)
    visual: VisualEncoderSettings = Field(default_factory=VisualEncoderSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    multitask: MultitaskSettings = Field(default_factory=MultitaskSettings)
    derived: Derived | None = None

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Settings:
        """Build from a flat ``{name: value}`` dict (canonical names); raises pydantic's ValidationError."""
        grouped: dict[str, dict[str, Any]] = {s: {} for s in SECTION_MODELS}
        for name, value in values.items():
            grouped[FIELDS[name].section][name] = value
        return cls.model_validate(grouped)

    def get(self, name: str) -> Any:
        """Value of an argument by its flat name."""
        return getattr(getattr(self, FIELDS[name].section), name)

    def flat(self, mode: str = "python") -> dict[str, Any]:
        """All arguments as a flat dict (``mode="json"`` gives JSON-ready values)."""
        out: dict[str, Any] = {}
        for section in SECTION_MODELS:
            out.update(getattr(self, section).model_dump(mode=mode))
        return out
