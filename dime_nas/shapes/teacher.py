"""The built-in demo teacher: a small open_clip CLIP trained contrastively on ShapesWorld.

No pretrained weights can be downloaded where the demo runs, so the project makes its
own teacher: ``train_shapes_teacher`` renders a pool of paired (image, caption) samples
from the config's seed, trains an ``open_clip.model.CLIP`` with the standard CLIP loss,
evaluates it zero-shot on the ShapesWorld suite, and saves it as an ordinary open_clip
checkpoint folder. The teacher loader then reads it like any user's checkpoint.
``ensure_shapes_teacher`` builds it once into a user cache dir and reuses it.

API:
    model_config(cfg) -> dict                      open_clip model config of the teacher
    pool_scenes(cfg) -> list[(Scene, hard)]        the training scenes, in groups (some hard negatives)
    group_batches(n_groups, per_step, rng)         endless batches of whole groups
    preprocess_config(cfg) -> dict                 open_clip preprocess config (size, CLIP mean/std)
    train_shapes_teacher(cfg, out_dir, *, progress=True) -> TeacherReport
    zero_shot_accuracy(model, tokenizer, tasks, cfg) -> dict[str, float]
    ensure_shapes_teacher(cfg, cache_root=None, *, progress=True) -> Path
    teacher_dir(cfg, cache_root=None) -> Path      where ensure_shapes_teacher keeps it
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import compact_vocab
from ..config import ShapesTeacherConfig
from ..config import TEACHER_GROUP_SIZE as GROUP_SIZE
from ..fs import user_cache_root
from ..optim import param_groups, warmup_cosine
from ..preprocess import CLIP_MEAN, CLIP_STD, to_model_input
from ..student import build_clip
from ..teacher import save_checkpoint_dir
from ..tokens import VOCAB_SIZE
from ..zero_shot import prompt_ensemble, top_k_accuracy
from .captions import caption
from .render import SHIFTS, render_batch
from .scene import COLOURS, SHAPES, SIZES, Scene, sample_scene
from .tasks import EvalTask, eval_suite

# Bump whenever the recipe below changes what a given config builds: it keys the cache.
CODE_VERSION = 4
CAPTIONS_PER_IMAGE = 4  # true captions drawn per pooled image; each epoch uses a different one
# Rows of the token embedding the captions use start far apart (open_clip: 0.02), or
# word identity starts too faint for the contrastive loss to pick up; other rows keep 0.02.
TOKEN_INIT_STD = 1.0
WEIGHT_DECAY = 0.1  # on matrices only (not 1-D params, biases, embeddings)
WARMUP_FRACTION = 0.05  # of the steps, then cosine decay to 0
EVAL_SEED = 12345  # ShapesEvalConfig's default: the teacher is scored on the students' suite
EVAL_PER_CLASS = 50
EXTRA_KEY = "dime_nas_teacher"  # where the checkpoint config keeps the training config and scores


@dataclass
class TeacherReport:
    """What a teacher build measured."""

    accuracy: dict[str, float]  # task key ("shape", "shape-sketch", ...) -> zero-shot top-1
    mean_accuracy: float  # mean over the in-distribution tasks
    shifted_accuracy: dict[str, float]  # shift -> mean over that shift's tasks
    seconds: float  # wall time of the whole build (render + train + evaluate + save)
    train_seconds: float  # the training loop alone
    render_seconds: float  # rendering and tokenising the training pool
    eval_seconds: float  # the zero-shot evaluation (plain and shifted suites)
    save_seconds: float  # writing the checkpoint folder
    steps_per_second: float
    final_loss: float  # mean contrastive loss over the last 50 steps
    threads: int = field(default_factory=torch.get_num_threads)
    checkpoint: str | None = None

    def format(self) -> str:
        """A short human-readable table."""
        names = [k for k in self.accuracy if "-" not in k]
        cols = ["plain", *self.shifted_accuracy]
        lines = [f"{'task':10s}" + "".join(f"{c:>9s}" for c in cols)]
        for n in names:
            row = [self.accuracy[n]] + [self.accuracy.get(f"{n}-{s}", float("nan")) for s in self.shifted_accuracy]
            lines.append(f"{n:10s}" + "".join(f"{100 * a:8.1f}%" for a in row))
        means = [self.mean_accuracy, *self.shifted_accuracy.values()]
        lines.append(f"{'mean':10s}" + "".join(f"{100 * a:8.1f}%" for a in means))
        lines.append(f"built in {self.seconds:.0f} s: render {self.render_seconds:.0f} s, training "
                     f"{self.train_seconds:.0f} s ({self.steps_per_second:.2f} steps/s, {self.threads} torch "
                     f"threads), evaluation {self.eval_seconds:.0f} s, save {self.save_seconds:.0f} s; "
                     f"final loss {self.final_loss:.3f}")
        return "\n".join(lines)


# ---- model ------------------------------------------------------------------------------

def model_config(cfg: ShapesTeacherConfig) -> dict[str, Any]:
    """The open_clip model config (``model_cfg``) of the teacher."""
    if cfg.tower == "resnet":  # a list of blocks per stage makes open_clip build a ModifiedResNet
        vision = {"image_size": cfg.image_size, "layers": [cfg.layers] * 4, "width": cfg.width, "head_width": 64}
    else:
        vision = {"image_size": cfg.image_size, "layers": cfg.layers, "width": cfg.width, "head_width": 64,
                  "patch_size": cfg.patch_size}
    return {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": False,
        "vision_cfg": vision,
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": VOCAB_SIZE, "width": cfg.text_width,
                     "heads": max(1, cfg.text_width // 64), "layers": cfg.text_layers},
    }


def preprocess_config(cfg: ShapesTeacherConfig) -> dict[str, Any]:
    """open_clip's preprocess config: the loader's transform then reproduces training inputs."""
    return {"size": [cfg.image_size, cfg.image_size], "mode": "RGB", "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def build_model(cfg: ShapesTeacherConfig) -> torch.nn.Module:
    """A freshly initialised ``open_clip.model.CLIP`` (seeded by the caller)."""
    return build_clip(model_config(cfg))


def _tokenizer(cfg: ShapesTeacherConfig):
    # What open_clip.get_tokenizer returns for a config without an HF tokenizer.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=cfg.context_length)


def _to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as the loader's transform does."""
    return to_model_input(pixels, pixels.shape[1], CLIP_MEAN, CLIP_STD)


# ---- data -------------------------------------------------------------------------------

def pool_scenes(cfg: ShapesTeacherConfig) -> list[tuple[Scene, bool]]:
    """The pool's scenes in groups of ``GROUP_SIZE``, each with whether its group is hard.

    A share ``hard_fraction`` of the groups are hard negatives: single objects of one
    colour and size and of distinct shapes, so that within the group only shape,
    position and texture tell them apart. Without them colour, size and count identify
    almost every scene of a random batch, and the contrastive loss never has to learn
    shape or position. A function of ``cfg.seed``.
    """
    n_groups = cfg.pool_size // GROUP_SIZE
    order = np.random.default_rng([cfg.seed, 606])
    hard_groups = set(order.permutation(n_groups)[:round(cfg.hard_fraction * n_groups)].tolist())
    scenes = []
    for g in range(n_groups):
        rng = np.random.default_rng([cfg.seed, 606, g])
        colour, size = str(rng.choice(list(COLOURS))), str(rng.choice(SIZES))
        shapes = rng.permutation(SHAPES)
        for j in range(GROUP_SIZE):
            member = np.random.default_rng([cfg.seed, 607, g, j])
            if g in hard_groups:
                shape = str(shapes[j % len(shapes)])
                scenes.append((sample_scene(member, n_objects=1, shape=shape, colour=colour, size=size), True))
            else:
                scenes.append((sample_scene(member), False))
    return scenes


def training_pool(cfg: ShapesTeacherConfig) -> tuple[np.ndarray, list[list[str]]]:
    """``pool_scenes`` rendered (uint8) with ``CAPTIONS_PER_IMAGE`` true captions each.

    Members of a hard group get full descriptions (shape, colour, size, position):
    a caption true of all of them ("one red object") would be a false negative
    within its own batch.
    """
    pool = pool_scenes(cfg)
    images = render_batch([scene for scene, _ in pool], cfg.image_size)
    texts = []
    for i, (scene, hard) in enumerate(pool):
        rng = np.random.default_rng([cfg.seed, 404, i])
        texts.append([caption(scene, rng, full=hard) for _ in range(CAPTIONS_PER_IMAGE)])
    return images, texts


def group_batches(n_groups: int, groups_per_step: int, rng: np.random.Generator):
    """Endless (epoch, item indices) batches of whole groups; each epoch a new group order.

    Groups left over at the end of an epoch are skipped, so no batch spans two epochs.
    """
    members = np.arange(GROUP_SIZE)
    epoch = 0
    while True:
        perm = rng.permutation(n_groups)
        for start in range(0, n_groups - groups_per_step + 1, groups_per_step):
            yield epoch, (perm[start:start + groups_per_step, None] * GROUP_SIZE + members).ravel()
        epoch += 1


# ---- training ---------------------------------------------------------------------------

def train_shapes_teacher(cfg: ShapesTeacherConfig, out_dir: str | Path, *, progress: bool = True) -> TeacherReport:
    """Train the demo teacher, evaluate it zero-shot and save it as an open_clip checkpoint folder.

    Deterministic from ``cfg.seed`` (for a fixed torch thread count): the pool, the
    initialisation and the data order all derive from it.

    Args:
        cfg: architecture and training budget.
        out_dir: the checkpoint folder to write (``open_clip_config.json`` +
            ``open_clip_model.safetensors``; the config also holds the training config
            and the accuracies under ``"dime_nas_teacher"``).
        progress: show a tqdm bar and print the report at the end.
    """
    t_start = time.perf_counter()
    tokenizer = _tokenizer(cfg)
    images, texts = training_pool(cfg)
    tokens = tokenizer([t for ts in texts for t in ts]).view(len(texts), CAPTIONS_PER_IMAGE, -1)
    render_seconds = time.perf_counter() - t_start

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    t_train = time.perf_counter()
    losses = _fit(model, cfg, images, tokens, progress)
    train_seconds = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    accuracy, plain, shifted = _zero_shot_report(model, tokenizer, cfg)
    eval_seconds = time.perf_counter() - t_eval
    report = TeacherReport(accuracy=accuracy, mean_accuracy=plain, shifted_accuracy=shifted,
                           seconds=0.0, train_seconds=train_seconds, render_seconds=render_seconds,
                           eval_seconds=eval_seconds, save_seconds=0.0,
                           steps_per_second=cfg.steps / max(train_seconds, 1e-9),
                           final_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
                           checkpoint=str(out_dir))
    extra = {EXTRA_KEY: {"config": asdict(cfg), "code_version": CODE_VERSION, "eval_seed": EVAL_SEED,
                         "eval_per_class": EVAL_PER_CLASS, "accuracy": accuracy,
                         "mean_accuracy": report.mean_accuracy, "shifted_accuracy": shifted,
                         "train_seconds": train_seconds, "steps_per_second": report.steps_per_second}}
    t_save = time.perf_counter()
    save_checkpoint_dir(model, model_config(cfg), out_dir, preprocess_config(cfg), extra)
    report.save_seconds = time.perf_counter() - t_save
    report.seconds = time.perf_counter() - t_start
    if progress:
        print(report.format())
    return report


def _fit(model: nn.Module, cfg: ShapesTeacherConfig, images: np.ndarray, tokens: torch.Tensor,
         progress: bool) -> list[float]:
    """CLIP's contrastive training of ``model`` on the pool (each epoch the next caption of each
    image); returns the loss per step. The model comes back in eval mode with its full vocabulary."""
    from tqdm.auto import tqdm

    model.train()
    # Train only the token rows the captions use (exact, and far cheaper than 49,408 rows).
    compact_vocab.compact(model, torch.unique(tokens))
    torch.nn.init.normal_(model.token_embedding.weight, std=TOKEN_INIT_STD)  # the used rows only
    optimizer = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                                  fused=True)
    warmup = max(1, round(WARMUP_FRACTION * cfg.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, cfg.steps))
    order = np.random.default_rng([cfg.seed, 505])
    batches = group_batches(len(images) // GROUP_SIZE, cfg.batch_size // GROUP_SIZE, order)
    labels = torch.arange(cfg.batch_size)
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="shapes teacher", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        epoch, idx = next(batches)
        x = _to_input(images[idx])
        t = tokens[torch.from_numpy(idx), epoch % CAPTIONS_PER_IMAGE]
        img, txt, scale = model(x, t)  # normalised features and exp(logit_scale)
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    compact_vocab.expand(model)
    model.eval()
    return losses


def _zero_shot_report(model: nn.Module, tokenizer: Any, cfg: ShapesTeacherConfig
                      ) -> tuple[dict[str, float], float, dict[str, float]]:
    """Zero-shot accuracy per task and shift, the mean over the unshifted tasks, and the mean per shift."""
    accuracy = {}
    for shift in (None, *SHIFTS):
        tasks = eval_suite(EVAL_SEED, EVAL_PER_CLASS, cfg.image_size, shift)
        accuracy.update(zero_shot_accuracy(model, tokenizer, tasks))
    plain = float(np.mean([a for k, a in accuracy.items() if "-" not in k]))
    shifted = {s: float(np.mean([a for k, a in accuracy.items() if k.endswith(f"-{s}")])) for s in SHIFTS}
    return accuracy, plain, shifted


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer: Any, tasks: list[EvalTask],
                       batch_size: int = 256) -> dict[str, float]:
    """Top-1 per task (keyed by ``task.key``), classes embedded as CLIP prompt ensembles."""
    out = {}
    for task in tasks:
        prompts = task.prompts()
        emb = model.encode_text(tokenizer([p for ps in prompts for p in ps]))
        classes = prompt_ensemble(emb.view(len(prompts), len(prompts[0]), -1))
        pixels = np.stack([np.asarray(im.convert("RGB")) for im in task.images])
        feats = torch.cat([model.encode_image(_to_input(pixels[i:i + batch_size]))
                           for i in range(0, len(pixels), batch_size)])
        scores = F.normalize(feats.float(), dim=-1) @ classes.T
        out[task.key] = top_k_accuracy(scores, torch.as_tensor(task.labels), 1)
    return out


# ---- cached build ---------------------------------------------------------------------------

def config_key(cfg: ShapesTeacherConfig) -> str:
    """Short hash of the config and ``CODE_VERSION``: names the cached teacher."""
    blob = json.dumps({"config": asdict(cfg), "code_version": CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def teacher_dir(cfg: ShapesTeacherConfig, cache_root: str | Path | None = None) -> Path:
    """Where ``ensure_shapes_teacher`` keeps the teacher built from ``cfg``."""
    root = Path(cache_root) if cache_root is not None else user_cache_root()
    return root / "teachers" / f"shapes-{config_key(cfg)}"


def is_complete(path: Path) -> bool:
    """A checkpoint folder holding both the config and the weights."""
    return (path / "open_clip_config.json").is_file() and (path / "open_clip_model.safetensors").is_file()


def ensure_shapes_teacher(cfg: ShapesTeacherConfig, cache_root: str | Path | None = None, *,
                          progress: bool = True) -> Path:
    """The checkpoint folder of the teacher built from ``cfg``, training it only if needed.

    A build goes to a temporary sibling folder that is renamed into place when complete,
    so a killed build never leaves a half checkpoint under the final name.
    """
    final = teacher_dir(cfg, cache_root)
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        if progress:
            print(f"building the ShapesWorld demo teacher into {final} (once; later runs reuse it)")
        train_shapes_teacher(cfg, tmp, progress=progress)
        if final.exists():  # a stray incomplete folder (not ours: ours only appear complete)
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep theirs
            if not is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
