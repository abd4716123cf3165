"""The samplers a search can use, by name (``search.sampler``): a factory of the Optuna sampler,
and what else the sampler needs of the space and the study (the grid: a discrete space, its
points queued before the first trial).

Adding a sampler is one entry in :data:`SAMPLERS`; config validation, the search and a
continued or shared study (reseeded per worker) read it from here. Optuna is imported only
when a sampler is built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError, did_you_mean

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import optuna

    from ..config import ExperimentConfig, SearchConfig
    from .objective import TrialContext


@dataclass(frozen=True)
class Sampler:
    """How one ``search.sampler`` name is served."""

    # (the search settings, the seed to use, the number of objectives) -> an Optuna sampler
    build: Callable[[SearchConfig, int, int], optuna.samplers.BaseSampler]
    discrete_space: bool = False  # needs every dimension discrete and the space within its max_grid
    # before the first trial of a run: e.g. queue the grid's points into the study
    prepare: Callable[[optuna.Study, TrialContext], None] | None = None
    # models only the dimensions every trial has: in a space of several branches the others are random
    shared_dimensions_only: bool = False


def _tpe(search: SearchConfig, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    # multivariate + group: the space is conditional (ViT dims only for ViT towers);
    # Optuna flags both as experimental, which users need not see on every run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)


def _nsga2(search: SearchConfig, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, (search.trials or 20) // 3)))


def _gp(search: SearchConfig, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _random(search: SearchConfig, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def enqueue_grid(study: optuna.Study, ctx: TrialContext) -> None:
    """Every configuration of the space once (skipping ones already queued or run)."""
    import optuna

    from .record import TrialRecord

    seen = {TrialRecord.from_trial(t).arch_key for t in study.get_trials(deepcopy=False)}
    queued = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,))}
    for config, params in ctx.space.grid_params(ctx.cache.embed_dim):
        if config.arch_key not in seen and json.dumps(params, sort_keys=True) not in queued:
            study.enqueue_trial(params, skip_if_exists=True)


SAMPLERS: dict[str, Sampler] = {
    "tpe": Sampler(_tpe),
    "nsga2": Sampler(_nsga2, shared_dimensions_only=True),
    "gp": Sampler(_gp, shared_dimensions_only=True),
    "random": Sampler(_random),
    # every point of the space, queued; the random sampler only fills gaps
    "grid": Sampler(_random, discrete_space=True, prepare=enqueue_grid),
}


def sampler_named(name: str) -> Sampler:
    """The sampler called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}" + did_you_mean(name, SAMPLERS) + f"; known: {', '.join(SAMPLERS)}",
                          key="search.sampler")
    return SAMPLERS[name]


def check_space(name: str, space_path: str) -> None:
    """Refuse, at config load, a space the sampler cannot search (a grid too large or continuous);
    warn where it would search most of the space at random."""
    sampler = sampler_named(name)
    if not (sampler.discrete_space or sampler.shared_dimensions_only):
        return
    from ..space import SearchSpace

    space = SearchSpace.load(space_path)
    if sampler.discrete_space:
        space.grid()
    branches = space.branches()
    if sampler.shared_dimensions_only and len(branches) > 1:
        kinds = ", ".join(f"{image} + text {text}" for image, text in branches)
        _log.warning("search.sampler %r models only the dimensions every student has; space %s has %d "
                     "branches (%s), so it draws their other dimensions at random (on a 522-student space of "
                     "two image families it did no better than random search); 'tpe' models each branch",
                     name, space.name, len(branches), kinds)


def sampler_seed(seed: int, trials_in_study: int, salt: str = "") -> int:
    """The seed itself for a new study; for a continued one (or one of several workers: ``salt``
    names the worker), a seed derived from it and the study's size."""
    if trials_in_study == 0 and not salt:
        return seed
    return int(hashlib.sha256(f"{seed}:{trials_in_study}{salt}".encode()).hexdigest()[:8], 16)


def make_sampler(config: ExperimentConfig, n_objectives: int, trials_in_study: int = 0,
                 salt: str = "") -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``config.search.sampler``, seeded for this study and worker."""
    search = config.search
    return sampler_named(search.sampler).build(search, sampler_seed(search.seed, trials_in_study, salt), n_objectives)


def prepare_study(config: ExperimentConfig, study: optuna.Study, ctx: TrialContext) -> None:
    """What the sampler needs done in the study before the first trial of a run."""
    prepare = sampler_named(config.search.sampler).prepare
    if prepare is not None:
        prepare(study, ctx)
