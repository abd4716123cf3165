"""A run folder's layout: one class knows every file a search, a report and a hand-off write.

Layout::

    experiment.json          which experiment owns the folder (checked before a run starts)
    experiment_config.json   {"storage", "config"}: the config and storage URL the run used
    study.db                 the Optuna study (the default SQLite storage)
    previous-<time>.db       a study set aside by ``--force``
    trials.csv, pareto.csv, selected.json, report.md, report.html,
    pareto_latency.png, pareto_macs.png           the report
    distill_results.json     full runs (proxy vs full), appended by each hand-off
    full/<arch_key>/         a full run's checkpoint; ``export/`` its deliverable

Imports only the standard library at module level, so ``import dime_nas`` stays light.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError
from .fs import write_atomic

if TYPE_CHECKING:
    from .config import ExperimentConfig


class RunDir:
    """The run folder at ``path`` (which need not exist yet)."""

    MARKER = "experiment.json"
    CONFIG = "experiment_config.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, config: ExperimentConfig, out: str | Path | None = None) -> RunDir:
        """``out``, else the experiment's ``out_dir``."""
        from .config import run_dir

        return cls(out if out is not None else run_dir(config))

    @classmethod
    def enclosing(cls, path: str | Path) -> RunDir:
        """The run folder holding ``path`` (a checkpoint, an export, the folder itself)."""
        path = Path(path)
        for folder in (path, *path.parents):
            if (folder / cls.CONFIG).is_file():
                return cls(folder)
        raise ConfigError(f"{path} is not inside a dime-nas run directory (no {cls.CONFIG} above it)")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- files ------------------------------------------------------------------------------

    @property
    def marker(self) -> Path:
        return self.path / self.MARKER

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    def previous_study(self, stamp: str) -> Path:
        """Where ``--force`` keeps the study it replaces."""
        return self.path / f"previous-{stamp}.db"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def pareto_csv(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def selected_json(self) -> Path:
        return self.path / "selected.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def pareto_plot(self, x: str) -> Path:
        """The plot of the quality metric against ``x`` (``latency_ms`` or ``gmacs``)."""
        return self.path / f"pareto_{'latency' if x == 'latency_ms' else 'macs'}.png"

    @property
    def distill_results(self) -> Path:
        return self.path / "distill_results.json"

    def full_run(self, arch_key: str) -> Path:
        """A full distillation's folder (checkpoints; resumed from here)."""
        return self.path / "full" / arch_key

    def export_dir(self, arch_key: str) -> Path:
        return self.full_run(arch_key) / "export"

    # ---- ownership and the recorded run --------------------------------------------------------

    def claim(self, config: ExperimentConfig, force: bool = False) -> None:
        """Make the folder this experiment's; refuse one that belongs to another (unless ``force``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.marker.exists() and not force:
            theirs = json.loads(self.marker.read_text())
            if theirs.get("name") != config.name:
                raise ConfigError(f"run directory {self.path} belongs to experiment {theirs.get('name')!r}, not "
                                  f"{config.name!r}: choose another --out, or pass --force", key="out_dir")
        # atomic: workers sharing the folder read it while others write it
        write_atomic(self.marker, json.dumps({"name": config.name, "source": config.source}, indent=1) + "\n")

    def default_storage(self) -> str:
        """The SQLite study in this folder (absolute, so the URL works from any directory)."""
        return f"sqlite:///{self.study_db.resolve()}"

    def storage_for(self, config: ExperimentConfig, override: str | None = None) -> str:
        """The storage URL a run uses: ``override``, else the config's ``search.storage``, else the default."""
        return override or config.search.storage or self.default_storage()

    def record(self, config: ExperimentConfig, storage: str) -> None:
        """Save the config and storage URL, so report, distill and export need only the folder."""
        from .typed_yaml import to_plain

        write_atomic(self.config_file, json.dumps({"storage": storage, "config": to_plain(config)}, indent=1) + "\n")

    @property
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def _recorded(self) -> dict:
        if not self.is_run:
            raise ConfigError(f"{self.path} is not a dime-nas run directory (no {self.CONFIG})")
        return json.loads(self.config_file.read_text())

    def load_config(self) -> ExperimentConfig:
        """The experiment config the run recorded."""
        from .config import ExperimentConfig
        from .typed_yaml import from_mapping

        return from_mapping(ExperimentConfig, self._recorded()["config"], file=self.config_file)

    @property
    def storage(self) -> str:
        """The storage URL the run recorded."""
        return self._recorded()["storage"]
