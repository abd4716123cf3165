"""Trained supernets kept in the user cache, named by what makes them.

A supernet depends on the teacher, the training data, the space and the recipe (its own
settings and the DIME-FM losses); the store keys it by a hash of exactly those, like the
feature cache, so a second search over the same space reuses it and a changed space or
recipe trains a new one. Training resumes from the folder's checkpoint after a kill; a
lock keeps two processes from training the same supernet at once; ``summary.json`` marks
it complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from ..fs import user_cache_root, write_atomic


def supernet_identity(config: Any, space: Any) -> dict[str, Any]:
    """What a supernet of this experiment (an ExperimentConfig) is made from."""
    from ..search.study import teacher_identity
    from ..typed_yaml import to_plain

    plain = to_plain(config)
    recipe = {k: v for k, v in plain["supernet"].items() if k not in ("finetune_steps", "finetune_lr", "device",
                                                                      "checkpoint_every")}
    return {"teacher": teacher_identity(plain["teacher"]), "data": plain["data"],
            "space": hashlib.sha256(Path(space.source).read_bytes()).hexdigest(),
            "recipe": recipe, "losses": plain["distill"]["losses"]}


def supernet_dir(config: Any, space: Any) -> Path:
    """The store folder of this experiment's supernet."""
    identity = json.dumps(supernet_identity(config, space), sort_keys=True, default=str)
    return user_cache_root() / "supernets" / f"{space.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def is_complete(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def load_or_train(config: Any, space: Any, cache: Any, *, build: bool = True, progress: bool = True) -> Any:
    """The experiment's trained supernet: from the store, else trained now (and stored).

    Args:
        build: train it when the store lacks it (False, as a worker: refuse instead).

    Raises:
        ConfigError: ``build`` is False and no complete supernet is stored.
    """
    from .train import load_supernet

    folder = supernet_dir(config, space)
    if not is_complete(folder):
        if not build:
            raise ConfigError(f"no trained supernet for this experiment in {folder}: run `dime-nas supernet "
                              f"{config.source or 'EXPERIMENT.yaml'}` (or the search) first; workers never train it",
                              key="search.evaluator")
        with _lock(folder):
            if not is_complete(folder):  # another process may have finished it while this one waited
                train_and_store(config, space, cache, folder, progress=progress)
    return load_supernet(folder)


def train_and_store(config: Any, space: Any, cache: Any, folder: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the supernet in ``folder``, evaluate its largest and smallest subnets on the
    validation split, and write ``summary.json`` (which marks it complete)."""
    from ..evaluate import evaluate_towers
    from .extract import extract
    from .train import extreme_students, train_supernet

    net, run = train_supernet(space, cache, config.supernet, config.distill.losses, checkpoint_dir=folder,
                              progress=progress)
    t0 = time.time()
    largest, smallest = extreme_students(space, cache.embed_dim)
    reached = {}
    for name, student in (("largest", largest), ("smallest", smallest)):
        metrics = evaluate_towers(extract(net.cpu(), student), cache)
        reached[name] = {"student": student.describe(), "arch_key": student.arch_key,
                         "accuracy": metrics.get("accuracy"), "image_accuracy": metrics.get("image_accuracy")}
    summary = {"identity": supernet_identity(config, space), "steps": run.steps, "device": run.device,
               "train_s": run.seconds, "seconds_per_step": run.seconds / max(1, run.steps),
               "subnets_per_step": run.subnets_trained / max(1, run.steps), "eval_s": time.time() - t0,
               "reached": reached, "final_losses": run.curve[-1] if run.curve else {}}
    write_atomic(folder / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

