"""Experiment YAML -> typed, validated dataclasses. Errors name the file and the key.

Every key is documented by the comment on its field; ``experiments/demo.yaml`` and
``experiments/dime-fm-vitl14-b32.yaml`` show complete files. Relative paths in the
file are resolved against the file's folder.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError, did_you_mean
from .metrics import METRICS, Budget, evaluated_metrics
from .typed_yaml import from_mapping, load_yaml_mapping



TEACHER_GROUP_SIZE = 8  # the demo teacher's pool comes in groups of scenes; a batch holds whole groups


@dataclass
class ShapesTeacherConfig:
    """The built-in demo teacher, trained contrastively on paired ShapesWorld data."""

    seed: int = 0  # seed of the teacher's data and initialisation
    image_size: int = 32  # teacher input resolution (the cache resizes images to it)
    embed_dim: int = 256  # teacher embedding width (students match it)
    tower: str = "resnet"  # image tower: "resnet" (open_clip's ModifiedResNet, as in RN50) or "vit"
    layers: int = 1  # residual blocks per ResNet stage, or ViT layers
    width: int = 32  # ResNet stem width (stages are 1x, 2x, 4x, 8x it, times 4), or ViT width (64 per head)
    patch_size: int = 8  # ViT patch size (ViT only)
    text_layers: int = 2  # layers of the teacher's text tower
    text_width: int = 128  # width of the text tower
    context_length: int = 24  # tokens per sentence
    steps: int = 650  # training steps (450 reached only 78% mean zero-shot at 32 px)
    batch_size: int = 128  # image-caption pairs per step: whole groups of 8 scenes
    lr: float = 1.5e-3  # peak AdamW learning rate
    hard_fraction: float = 0.5  # share of the groups that are hard negatives (see shapes/teacher.py)
    pool_size: int = 20000  # distinct paired scenes rendered for training (groups of 8)

    def __post_init__(self) -> None:
        if self.tower not in ("resnet", "vit"):
            raise ConfigError(f"unknown tower {self.tower!r}; expected 'resnet' or 'vit'", key="teacher.shapes.tower")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ConfigError("must be within [0, 1]", key="teacher.shapes.hard_fraction")
        g = TEACHER_GROUP_SIZE
        if self.batch_size < g or self.batch_size % g:
            raise ConfigError(f"must be a positive multiple of {g} (batches hold whole groups of {g} scenes), "
                              f"got {self.batch_size}", key="teacher.shapes.batch_size")
        if self.pool_size < self.batch_size or self.pool_size % g:
            raise ConfigError(f"must be a multiple of {g} and at least batch_size ({self.batch_size}), "
                              f"got {self.pool_size}", key="teacher.shapes.pool_size")
        if self.tower == "resnet" and self.image_size % 32:
            raise ConfigError(f"the ResNet tower needs a multiple of 32, got {self.image_size}",
                              key="teacher.shapes.image_size")
        if self.tower == "vit" and (self.width % 64 or self.image_size % self.patch_size):
            raise ConfigError("the ViT tower needs width a multiple of 64 (heads of 64) and image_size a multiple "
                              "of patch_size", key="teacher.shapes.width")


@dataclass
class TeacherConfig:
    """Where the frozen teacher comes from: exactly one of shapes / model+pretrained / checkpoint."""

    shapes: ShapesTeacherConfig | None = None  # the built-in demo teacher (built once, then cached)
    model: str | None = None  # open_clip model name, e.g. ViT-L-14
    pretrained: str | None = None  # open_clip pretrained tag, e.g. openai
    checkpoint: str | None = None  # local open_clip checkpoint folder, or a state-dict file (with `model`)
    cache_dir: str | None = None  # where open_clip keeps downloaded weights
    device: str = "cpu"  # device for the teacher while the feature cache is built (cpu, cuda, cuda:1)
    batch_size: int = 64  # teacher batch size while building the cache

    def __post_init__(self) -> None:
        sources = [self.shapes is not None, bool(self.model and self.pretrained) or bool(self.checkpoint)]
        if sum(sources) != 1:
            raise ConfigError("give exactly one of: shapes, model + pretrained, or checkpoint", key="teacher")
        if self.model and not (self.pretrained or self.checkpoint):
            raise ConfigError("model needs a pretrained tag or a checkpoint", key="teacher.pretrained")


@dataclass
class ShapesDataConfig:
    """Unpaired ShapesWorld corpora, written to real files and read back by the corpus readers."""

    n_images: int = 4000  # images in the image corpus
    n_sentences: int = 4000  # sentences in the sentence corpus (drawn independently of the images)
    image_size: int = 64  # resolution the images are rendered at
    seed: int = 1  # seed of the image stream (the sentence stream uses another seed)
    format: str = "folder"  # folder (png files) or tar (WebDataset-style shards)

    def __post_init__(self) -> None:
        if self.format not in ("folder", "tar"):
            raise ConfigError(f"format must be folder or tar, got {self.format!r}", key="data.shapes.format")


@dataclass
class DataConfig:
    """The unpaired training corpora: ShapesWorld, or your own images and sentences."""

    shapes: ShapesDataConfig | None = None  # use the built-in world
    images: str | list[str] | None = None  # image folder, tar shards (brace ranges ok), or a list file
    sentences: str | list[str] | None = None  # .txt / .csv / .tsv / .parquet / .jsonl files
    sentence_column: str | None = None  # column (csv/tsv/parquet) or field (jsonl) holding the sentence
    pixel_size: int = 64  # students read images from a uint8 store at this size: >= the largest student input
    max_images: int | None = None  # use only the first N images (None: all)
    max_sentences: int | None = None  # use only the first N sentences (None: all)
    # corpus images byte-identical to an evaluation or retrieval image leak the test into training:
    # false refuses the cache build naming them, true drops them and counts them in the cache summary
    drop_eval_overlap: bool = False

    def __post_init__(self) -> None:
        if (self.shapes is None) == (self.images is None and self.sentences is None):
            raise ConfigError("give either shapes or images + sentences", key="data")
        if self.shapes is None and (self.images is None or self.sentences is None):
            raise ConfigError("both images and sentences are needed", key="data")


@dataclass
class ShapesEvalConfig:
    """ShapesWorld's evaluation suite: zero-shot tasks, shifted variants, paired retrieval."""

    n_per_class: int = 10  # images per class per task
    shifts: list[str] = field(default_factory=lambda: ["sketch", "noisy"])  # shifted variants to evaluate
    retrieval_size: int = 200  # image-caption pairs in the retrieval set


@dataclass
class FolderTaskConfig:
    """A zero-shot task on your images: an ImageFolder tree (one sub-folder per class)."""

    name: str  # task name shown in reports
    folder: str  # root folder; sub-folder names are the class names unless `classnames` is given
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # prompt templates, {} = class
    classnames: dict[str, str] | None = None  # sub-folder -> class name used in prompts
    shifted: bool = False  # counts towards shifted_accuracy instead of accuracy


@dataclass
class RetrievalConfig:
    """A paired image-caption set for retrieval: a JSONL file of {"image": path, "caption": text}."""

    pairs: str  # JSONL path; image paths relative to the file


@dataclass
class EvalConfig:
    shapes: ShapesEvalConfig | None = None  # ShapesWorld's suite
    tasks: list[FolderTaskConfig] = field(default_factory=list)  # your zero-shot tasks
    retrieval: RetrievalConfig | None = None  # your paired retrieval set
    max_images_per_task: int | None = None  # cap per task (None: all)
    # share of each task's (and the retrieval set's) images held out as the test split, by a hash of the
    # file names: trials and selection see only the rest (validation); full runs report both
    test_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"must be strictly between 0 and 1, got {self.test_fraction}", key="eval.test_fraction")


@dataclass
class LossConfig:
    """DIME-FM loss weights and temperatures (the README's "DIME-FM losses" section)."""

    w_vl: float = 0.7
    w_pvl: float = 0.3
    w_udist: float = 0.0
    t_vl: float = 1.0
    t_pvl: float = 3.0
    t_udist: float = 7.0
    w_text_vl: float = 0.7  # student text towers only
    w_text_pvl: float = 0.3  # student text towers only
    kind: str = "dime-fm"  # dime-fm, or feature (cosine feature distillation baseline)


SHORT_RUN_ONLY = ("seeds", "text_tower_step_scale")  # DistillConfig settings a full run does not use


@dataclass
class DistillConfig:
    """One distillation run's budget and optimiser."""

    steps: int = 200  # optimiser steps (a run stops at whichever of steps / seconds comes first)
    seconds: float | None = None  # wall-clock cap in seconds (None: no cap)
    batch_size: int = 64  # images per step
    text_batch_size: int = 64  # sentences per step (an independent stream)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # not applied to 1-D parameters, biases and embeddings
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 0
    grad_clip: float | None = 1.0  # max gradient norm (None: off)
    augment: bool = False  # random resized crops + flips (off: the cache holds one embedding per image)
    seed: int = 0  # seeds initialisation and data order
    seeds: int = 1  # short runs per trial (seed, seed + 1, ...): a trial scores their mean; full runs use one
    # short runs of students that train their own text tower take this many times the steps (warm-up and
    # evaluation points alike): such a tower starts from nothing and lags after the demo's 240 steps; at 2x
    # the short run ranks 24 students at Kendall tau 0.75 against 2400-step runs, at 1x 0.59
    # (experiments/results/proxy_fidelity_holdout_scale2.md). Full runs train `steps` whatever the student.
    text_tower_step_scale: float = 2.0
    eval_every: int | None = None  # evaluate every N steps (for pruning and curves; None: only at the end)
    average_last_evals: int = 1  # score = mean of the last K evaluations (needs eval_every); 1: the final one only
    checkpoint_every: int = 500  # full runs: steps between resumable checkpoints
    compile: bool = True  # torch.compile the student when training on a GPU (ignored on CPU)
    # "cpu", "cuda" or "cuda:N"; None: the GPU when CUDA is available (under torchrun the
    # rank's local GPU, cuda:LOCAL_RANK), else the CPU
    device: str | None = None
    losses: LossConfig = field(default_factory=LossConfig)
    # full runs: "scratch" (random initialisation) or "supernet" (the weights the study's supernet holds
    # for the student: search.evaluator supernet); a short run always starts from scratch
    init: str = "scratch"

    def __post_init__(self) -> None:
        if self.init not in ("scratch", "supernet"):
            raise ConfigError(f"must be scratch or supernet, got {self.init!r}", key="full_distill.init")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"must be cpu, cuda or cuda:N, got {self.device!r}", key="distill.device")
        if self.seeds < 1:
            raise ConfigError(f"must be >= 1, got {self.seeds}", key="distill.seeds")
        if not 0 < self.text_tower_step_scale < math.inf:
            raise ConfigError(f"must be a number > 0, got {self.text_tower_step_scale}",
                              key="distill.text_tower_step_scale")
        if self.average_last_evals < 1:
            raise ConfigError(f"must be >= 1, got {self.average_last_evals}", key="distill.average_last_evals")
        if self.average_last_evals > 1 and not self.eval_every:
            raise ConfigError("averaging evaluations needs eval_every (evaluations during the run)",
                              key="distill.average_last_evals")

    def step_scale(self, student) -> float:
        """How many times ``steps`` a search's short run of ``student`` (a StudentConfig) takes."""
        return 1.0 if student.text.kind == "teacher" else self.text_tower_step_scale

    def for_student(self, student) -> DistillConfig:
        """The short-run settings of one student: its steps, warm-up, evaluation interval and time
        cap scaled by ``step_scale``, so that its schedule has the same shape, only longer (rounding
        may give it one evaluation more or fewer than the unscaled run)."""
        scale = self.step_scale(student)
        if scale == 1.0:
            return self

        def scaled(n: int) -> int:
            return max(1, round(n * scale))

        return replace(self, steps=scaled(self.steps), warmup_steps=round(self.warmup_steps * scale),
                       eval_every=scaled(self.eval_every) if self.eval_every else self.eval_every,
                       seconds=self.seconds * scale if self.seconds is not None else None)


@dataclass
class Objective:
    metric: str  # one of METRICS
    direction: str | None = None  # maximize / minimize (default: the metric's natural direction)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}" + did_you_mean(self.metric, METRICS)
                              + f"; known: {', '.join(METRICS)}", key="objectives")
        self.direction = self.direction or METRICS[self.metric].direction
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be maximize or minimize, got {self.direction!r}", key="objectives")


@dataclass
class SupernetConfig:
    """The weight-sharing supernet (search.evaluator: supernet): trained once by DIME-FM from the feature
    cache, then every trial scores its student with the weights the supernet holds for it."""

    steps: int = 2000  # optimiser steps of the supernet's training
    batch_size: int = 64  # images per step (each sampled subnet sees the same batch)
    text_batch_size: int = 64  # sentences per step
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # not applied to 1-D parameters, biases and embeddings
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 0
    grad_clip: float | None = 1.0  # max gradient norm (None: off)
    # the sandwich rule: each step trains the largest and the smallest subnet and this many drawn by
    # the space's own distribution, their gradients summed
    random_subnets: int = 2
    # smaller subnets also learn the largest one's image embeddings (in-place distillation, BigNAS)
    inplace_distill: bool = False
    # DIME-FM steps on each extracted student before it is scored (0: none); 10 ranked best of 0/10/40 on the
    # tuning students (experiments/results/supernet_tuning.md), chosen before the fresh students ran
    finetune_steps: int = 10
    finetune_lr: float = 5e-4  # their peak learning rate (cosine to 0, no warm-up)
    checkpoint_every: int = 250  # steps between resumable checkpoints
    seed: int = 0  # seeds initialisation, data order and the subnets drawn
    device: str | None = None  # cpu, cuda or cuda:N (None: the GPU when there is one)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "text_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", key=f"supernet.{name}")
        for name in ("random_subnets", "finetune_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", key=f"supernet.{name}")
        if not self.lr > 0 or not self.finetune_lr > 0:
            raise ConfigError("learning rates must be > 0", key="supernet.lr")


@dataclass
class SearchConfig:
    sampler: str = "tpe"  # a name in search/samplers.py's SAMPLERS: tpe, nsga2, gp, random or grid
    # how a trial scores a student: short_distill (a short DIME-FM run from scratch) or supernet
    # (the weights a trained weight-sharing supernet holds for it: ViT spaces only, see `supernet`)
    evaluator: str = "short_distill"
    seed: int = 0  # sampler seed
    # distinct architectures to evaluate (a repeat reuses a result and is not counted; None: until timeout_s)
    trials: int | None = 20
    max_trials: int | None = None  # cap on all trials, repeats included (default 3 x trials): a small space cannot loop
    timeout_s: float | None = None  # wall-clock limit of the search in seconds
    storage: str | None = None  # Optuna storage URL (default: sqlite file in the run directory)
    prune: bool = True  # single-objective studies: median-prune trials on intermediate accuracy
    # seed std of one short run's accuracy, measured for this experiment (experiments/benchmarks/seed_noise.py):
    # the report prints the smallest accuracy difference the front resolves (with distill.seeds >= 2 the
    # trials measure it themselves)
    proxy_seed_std: float | None = None
    # hypervolume reference per objective, e.g. {latency_ms: 10}; default: budgets, and 0 for accuracies
    hv_reference: dict[str, float] | None = None
    near_budget_margin: float = 0.15  # a first latency within this fraction of a budget is re-measured
    near_budget_rounds: int = 4  # re-measurement rounds of a near-budget student (pooled median decides)
    # database storages: a worker beats every heartbeat_s; one silent for grace_s is dead and its trial failed
    heartbeat_s: int = 60
    grace_s: int = 180
    retries: int = 1  # a trial failed by a dead worker is run again this many times (on another worker)
    # processes on this machine that share the search, each with its share of the cores (CPU searches)
    local_workers: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.near_budget_margin <= 1.0:
            raise ConfigError(f"must be within [0, 1], got {self.near_budget_margin}", key="search.near_budget_margin")
        if self.near_budget_rounds < 0:
            raise ConfigError(f"must be >= 0, got {self.near_budget_rounds}", key="search.near_budget_rounds")
        if self.proxy_seed_std is not None and not 0 < self.proxy_seed_std < math.inf:
            raise ConfigError(f"must be a number > 0, got {self.proxy_seed_std}", key="search.proxy_seed_std")
        from .search.evaluators import EVALUATORS  # standard library only until a trial runs
        from .search.samplers import sampler_named  # standard library only until a sampler is built

        if self.evaluator not in EVALUATORS:
            raise ConfigError(f"unknown evaluator {self.evaluator!r}" + did_you_mean(self.evaluator, EVALUATORS),
                              key="search.evaluator")

        sampler_named(self.sampler)
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"must be >= 1, got {self.trials}", key="search.trials")
        if self.max_trials is not None and self.trials is not None and self.max_trials < self.trials:
            raise ConfigError(f"must be >= trials ({self.trials}), got {self.max_trials}", key="search.max_trials")
        if self.trials is None and self.timeout_s is None:
            raise ConfigError("give trials or timeout_s (or both)", key="search")
        if self.heartbeat_s < 1:
            raise ConfigError(f"must be >= 1, got {self.heartbeat_s}", key="search.heartbeat_s")
        if self.grace_s <= self.heartbeat_s:
            raise ConfigError(f"must be > heartbeat_s ({self.heartbeat_s}), got {self.grace_s}", key="search.grace_s")
        if self.retries < 0:
            raise ConfigError(f"must be >= 0, got {self.retries}", key="search.retries")
        if self.local_workers < 1:
            raise ConfigError(f"must be >= 1, got {self.local_workers}", key="search.local_workers")


@dataclass
class LatencyPredictorConfig:
    """Decide clearly over- or under-budget candidates by predicted latency, without measuring."""

    path: str | None = None  # a saved predictor (`dime-nas predictor fit`) to start from (None: learn in the search)
    margin: float = 0.25  # decide only when the prediction is this far past the budget (0.25: over 125% / under 75%)
    min_measurements: int = 20  # measured towers needed before any decision by prediction
    refit_every: int = 10  # refit after this many new measurements
    min_per_family: int = 3  # measured towers of a candidate's family (ViT, each timm model, text) needed first:
    # an unseen family is extrapolated from the others (a convnet read 7 ms that measures 13.5)

    def __post_init__(self) -> None:
        if not 0 < self.margin < 1:
            raise ConfigError(f"must be in (0, 1), got {self.margin}", key="latency_predictor.margin")
        if self.min_measurements < 8 or self.refit_every < 1 or self.min_per_family < 1:
            raise ConfigError("min_measurements must be >= 8, refit_every >= 1 and min_per_family >= 1",
                              key="latency_predictor")


PRECISIONS = ("fp32", "int8", "auto")


@dataclass
class DeliverableConfig:
    """What `dime-nas find` and `dime-nas verify` ship, and how they check it on the target."""

    # fp32, int8, or auto: int8 when its test accuracy is within int8_tolerance of fp32's and it is faster
    precision: str = "auto"
    int8_tolerance: float = 0.01  # largest loss of test accuracy (0.01 = 1 point) that auto accepts for int8
    # int8 variants compared (dime_nas/quantize.py): dynamic or static (calibrated on corpus data), per tensor
    # or per channel; the fastest within the tolerance stands for int8
    quantization: list[str] = field(default_factory=lambda: ["dynamic", "dynamic-per-channel", "static",
                                                             "static-per-channel"])
    calibration_samples: int = 128  # corpus images (sentences for a text tower) that calibrate static int8
    latency_rounds: int = 3  # measurements per tower and variant; the interval is over all their sessions
    candidates: int = 3  # students `find` distils and verifies at most before it gives up

    def __post_init__(self) -> None:
        from .quantize import QUANTIZATIONS

        if self.precision not in PRECISIONS:
            raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                              key="deliverable.precision")
        if not 0 <= self.int8_tolerance < 1:
            raise ConfigError(f"must be within [0, 1), got {self.int8_tolerance}", key="deliverable.int8_tolerance")
        unknown = [q for q in self.quantization if q not in QUANTIZATIONS]
        if unknown or not self.quantization:
            raise ConfigError(f"must be a non-empty list from {', '.join(QUANTIZATIONS)}, got {self.quantization}",
                              key="deliverable.quantization")
        for name in ("calibration_samples", "latency_rounds", "candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", key=f"deliverable.{name}")


@dataclass
class ExperimentConfig:
    name: str  # names the study and the run
    teacher: TeacherConfig  # the frozen teacher
    data: DataConfig  # unpaired training corpora
    space: str  # search space file (or the name of a shipped space: tiny, edge, dime-fm-b32)
    eval: EvalConfig = field(default_factory=EvalConfig)  # how students are evaluated
    target: str = "local-cpu"  # latency target the objectives and budgets use
    targets_file: str | None = None  # extra target definitions (YAML), added to the shipped ones
    objectives: list[Objective] = field(default_factory=lambda: [Objective("accuracy"), Objective("latency_ms")])
    budgets: list[str] = field(default_factory=list)  # hard constraints, e.g. "latency_ms <= 8"
    latency_predictor: LatencyPredictorConfig | None = None  # skip measuring candidates far from the latency budget
    distill: DistillConfig = field(default_factory=DistillConfig)  # the short run of each trial
    full_distill: DistillConfig = field(default_factory=lambda: DistillConfig(steps=2000, checkpoint_every=250))
    search: SearchConfig = field(default_factory=SearchConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)  # with search.evaluator: supernet
    deliverable: DeliverableConfig = field(default_factory=DeliverableConfig)  # what find/verify ship and check
    out_dir: str = "runs/{name}"  # run directory ({name} = the experiment name)
    cache_dir: str | None = None  # teacher-feature cache (default: the user cache dir, keyed by teacher+data)
    source: str | None = None  # set by load_experiment: the file this came from

    @property
    def budget_list(self) -> list[Budget]:
        return [Budget.parse(b) for b in self.budgets]


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file; every problem is a ConfigError naming the key."""
    path = Path(path)
    raw = load_yaml_mapping(path)
    if isinstance(raw.get("full_distill"), dict) and "text_tower_step_scale" in raw["full_distill"]:
        raise ConfigError("a full run trains full_distill.steps whatever the student: the scale is for the short "
                          "runs (distill.text_tower_step_scale)", file=path, key="full_distill.text_tower_step_scale")
    config = from_mapping(ExperimentConfig, raw, file=path)
    config.source = str(path)
    _resolve_paths(config, path.parent)
    _validate(config, path)
    return config


def with_budgets(config: ExperimentConfig, budgets: list[Budget], target: str | None = None) -> ExperimentConfig:
    """A copy of ``config`` with ``budgets`` added to its own (and ``target`` in place of its target),
    validated as a loaded file is (a budget on a metric the experiment does not measure is refused)."""
    import copy

    out = copy.deepcopy(config)
    out.budgets = [*config.budgets, *(str(b) for b in budgets if str(b) not in map(str, config.budget_list))]
    if target is not None:
        out.target = target
    _validate(out, Path(config.source or "<experiment>"))
    return out


def _resolve_paths(config: ExperimentConfig, base: Path) -> None:
    def resolve(p):
        if p is None or "://" in str(p):
            return p
        if isinstance(p, list):
            return [resolve(x) for x in p]
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q))

    from .space import resolve_space_path, shipped_spaces_dir

    space = resolve_space_path(config.space)
    if not space.is_absolute() and not str(space).startswith(str(shipped_spaces_dir())):
        candidate = base / space
        space = candidate if candidate.exists() else space
    config.space = str(space)
    d = config.data
    d.images, d.sentences = resolve(d.images), resolve(d.sentences)
    config.teacher.checkpoint = resolve(config.teacher.checkpoint)
    config.targets_file = resolve(config.targets_file)
    if config.latency_predictor is not None:
        config.latency_predictor.path = resolve(config.latency_predictor.path)
    for task in config.eval.tasks:
        task.folder = resolve(task.folder)
    if config.eval.retrieval:
        config.eval.retrieval.pairs = resolve(config.eval.retrieval.pairs)


def _validate(config: ExperimentConfig, file: Path) -> None:
    for i, b in enumerate(config.budgets):
        try:
            Budget.parse(b)
        except ConfigError as exc:
            raise ConfigError(exc.problem, file=file, key=f"budgets[{i}]") from None
    if not config.objectives:
        raise ConfigError("at least one objective is needed", file=file, key="objectives")
    if config.distill.init != "scratch":
        raise ConfigError("a search's short run starts from scratch: init is for full runs (full_distill.init)",
                          file=file, key="distill.init")
    if config.full_distill.init == "supernet" and config.search.evaluator != "supernet":
        raise ConfigError("starting full runs from the supernet needs search.evaluator: supernet", file=file,
                          key="full_distill.init")
    if config.search.evaluator == "supernet":
        from .space import SearchSpace
        from .supernet.elastic import SupernetShape

        try:
            SupernetShape.of_space(SearchSpace.load(config.space), 1)
        except ConfigError as exc:
            raise ConfigError(exc.problem, file=file, key="search.evaluator") from None
    if config.full_distill.seeds != 1:
        raise ConfigError("a full run trains one student: seeds is for the short runs (distill.seeds)",
                          file=file, key="full_distill.seeds")
    evaluated = evaluated_metrics(config.eval)
    for i, o in enumerate(config.objectives):
        if o.metric not in evaluated:
            raise ConfigError(f"objective {o.metric!r} is not measured by this experiment's eval section",
                              file=file, key=f"objectives[{i}]")
    for metric in config.search.hv_reference or {}:
        if metric not in {o.metric for o in config.objectives}:
            raise ConfigError(f"{metric!r} is not an objective of this experiment", file=file,
                              key=f"search.hv_reference.{metric}")
    for i, b in enumerate(config.budget_list):
        if b.metric not in evaluated:
            raise ConfigError(f"budget on {b.metric!r}, which this experiment does not measure",
                              file=file, key=f"budgets[{i}]")
    if config.latency_predictor is not None and not any(b.metric == "latency_ms" and b.op == "<="
                                                        for b in config.budget_list):
        raise ConfigError("deciding by predicted latency needs a budget `latency_ms <= N`", file=file,
                          key="latency_predictor")
    if config.latency_predictor is not None and config.latency_predictor.path and not Path(
            config.latency_predictor.path).is_file():
        raise ConfigError(f"file not found: {config.latency_predictor.path}", file=file, key="latency_predictor.path")
    if not Path(config.space).is_file():
        raise ConfigError(f"search space not found: {config.space}", file=file, key="space")
    from .cost.targets import get_target

    get_target(config.target, config.targets_file, source=file)  # what this machine can do: api.preflight
    from .data.corpus_base import expand_paths

    for key, p in [("data.images", config.data.images), ("data.sentences", config.data.sentences),
                   ("teacher.checkpoint", config.teacher.checkpoint)]:
        if p is None:
            continue
        try:  # brace ranges and globs must match at least one file
            expand_paths(p)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"path not found: {exc}".replace("path not found: file not found: ", "path not found: "),
                              file=file, key=key) from None
    for i, task in enumerate(config.eval.tasks):
        if not Path(task.folder).is_dir():
            raise ConfigError(f"folder not found: {task.folder}", file=file, key=f"eval.tasks[{i}].folder")
    if config.eval.retrieval and not Path(config.eval.retrieval.pairs).is_file():
        raise ConfigError(f"file not found: {config.eval.retrieval.pairs}", file=file, key="eval.retrieval.pairs")
    from .search.samplers import check_space

    check_space(config.search.sampler, config.space)  # e.g. refuses a grid too large or continuous, now


def run_dir(config: ExperimentConfig) -> Path:
    return Path(config.out_dir.format(name=config.name))
