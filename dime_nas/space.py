"""Search spaces as data: ``dime_nas/search_spaces/*.yaml`` -> SearchSpace -> StudentConfig.

File format (every key is checked; see ``dime_nas/search_spaces/tiny.yaml`` for a full example)::

    name: tiny
    embed_dim: 256            # a search replaces it with the teacher's embedding width
    image:
      kind: [vit, timm]       # which image-tower branches the search may pick
      vit:                    # sampled only when image.kind == vit
        layers: {low: 2, high: 6}          # int range (step 1)
        width: [64, 128, 192]              # categorical
        heads: [2, 4]                      # or head_width: [32, 64]
        mlp_ratio: [2.0, 4.0]
        patch_size: [8, 16]
        image_size: 64                     # a scalar is a fixed value
      timm:
        model: [convnext_atto, resnet18]
        image_size: [160, 224]
    text:
      kind: teacher           # teacher | transformer | [teacher, transformer]
      transformer: {layers: ..., width: ..., heads: ..., context_length: ...}
    constraints:              # expressions over dotted dimension names
      - image.vit.layers * image.vit.width <= 768

A dimension is a scalar (fixed), a non-empty list (categorical), or a range
``{low, high, step?, log?}`` (int when low/high are ints, float otherwise).
Built-in constraints (width divisible by heads, resolution divisible by patch) are
always added. Constraints are *enforced*: when a dimension is sampled, its choices are
narrowed to values that still admit a valid completion, so every sampled config is
valid. Narrowed choices use a parameter name carrying the allowed set (e.g.
``image.vit.heads[2,4]``) because Optuna ties one distribution to one name.
"""
from __future__ import annotations

import ast
import itertools
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean
from .student import StudentConfig, TextTowerConfig, VisionTowerConfig
from .typed_yaml import load_yaml_mapping

DEFAULT_MAX_GRID = 20000

# branch -> dimension -> python type of its values
_BRANCH_DIMS: dict[str, dict[str, type]] = {
    "image.vit": {"layers": int, "width": int, "heads": int, "head_width": int,
                  "mlp_ratio": float, "patch_size": int, "image_size": int},
    "image.timm": {"model": str, "image_size": int, "pool": str, "proj": str},
    "text.transformer": {"layers": int, "width": int, "heads": int,
                         "context_length": int, "mlp_ratio": float},
}
_REQUIRED = {
    "image.vit": {"layers", "width", "mlp_ratio", "patch_size", "image_size"},
    "image.timm": {"model", "image_size"},
    "text.transformer": {"layers", "width", "heads", "context_length"},
}
_KINDS = {"image": ("vit", "timm"), "text": ("teacher", "transformer")}
_BUILTIN_CONSTRAINTS = (
    "image.vit.width % image.vit.heads == 0",
    "image.vit.width % image.vit.head_width == 0",
    "image.vit.image_size % image.vit.patch_size == 0",
    "text.transformer.width % text.transformer.heads == 0",
)


@dataclass(frozen=True)
class Dimension:
    """One searchable dimension: fixed value, categorical choices, or a range."""

    name: str  # dotted, e.g. "image.vit.width"
    choices: tuple | None = None  # categorical (a fixed value is a 1-choice categorical)
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    is_int: bool = False

    @property
    def discrete(self) -> bool:
        return self.choices is not None or self.is_int or self.step is not None

    def values(self) -> tuple:
        """Every value of a discrete dimension, in order."""
        if self.choices is not None:
            return self.choices
        if self.is_int:
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return tuple(round(self.low + i * self.step, 10) for i in range(n))
        raise ConfigError(f"{self.name} is a continuous range and has no finite value list")

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is one of this dimension's values (within a continuous range)."""
        if self.discrete:
            return any(value == v or (isinstance(v, float) and isinstance(value, (int, float))
                                      and math.isclose(value, v)) for v in self.values())
        return self.low <= value <= self.high

    def suggest(self, trial: Any, allowed: tuple | None = None) -> Any:
        """Sample through Optuna's trial API; ``allowed`` narrows a discrete dimension."""
        if allowed is not None and allowed != self.values():
            label = ",".join(str(v) for v in allowed)
            return trial.suggest_categorical(f"{self.name}[{label}]", list(allowed))
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


class Constraint:
    """A boolean expression over dotted dimension names, e.g. ``image.vit.width % image.vit.heads == 0``."""

    _BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
    _CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
               ast.NotIn: lambda a, b: a not in b}

    def __init__(self, text: str):
        self.text = text
        try:
            self._tree = ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"cannot parse constraint {text!r}: {exc.msg}") from None
        self.names: set[str] = set()
        self._collect(self._tree)

    def _collect(self, node: ast.AST) -> None:
        name = _dotted(node)
        if name is not None:
            self.names.add(name)
            return
        allowed = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Compare,
                   ast.Constant, ast.Tuple, ast.List, *self._BINOPS, *self._CMPOPS)
        if not isinstance(node, allowed):
            raise ConfigError(f"constraint {self.text!r} uses unsupported syntax {type(node).__name__}")
        for child in ast.iter_child_nodes(node):
            self._collect(child)

    def holds(self, values: dict[str, Any]) -> bool:
        try:
            return bool(self._eval(self._tree, values))
        except ZeroDivisionError:
            return False

    def _eval(self, node: ast.AST, v: dict[str, Any]) -> Any:
        name = _dotted(node)
        if name is not None:
            return v[name]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._eval(e, v) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            vals = (self._eval(e, v) for e in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp):
            x = self._eval(node.operand, v)
            return (not x) if isinstance(node.op, ast.Not) else -x
        if isinstance(node, ast.BinOp):
            return self._BINOPS[type(node.op)](self._eval(node.left, v), self._eval(node.right, v))
        left = self._eval(node.left, v)  # ast.Compare, possibly chained
        for op, comparator in zip(node.ops, node.comparators):
            right = self._eval(comparator, v)
            if not self._CMPOPS[type(op)](left, right):
                return False
            left = right
        return True


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class SearchSpace:
    """A declarative space of student architectures; see the module docstring."""

    def __init__(self, spec: dict[str, Any], source: str | Path = "<dict>"):
        self.source = str(source)
        self.name, self.description, self.embed_dim, self.max_grid = "", "", 0, DEFAULT_MAX_GRID
        self.kinds: dict[str, tuple[str, ...]] = {}
        self.dims: dict[str, Dimension] = {}  # every declared dimension, in sampling order
        self.constraints: list[Constraint] = []
        self._parse(spec)
        self._branch_ok: dict[tuple[str, str], bool] = {}
        for combo in itertools.product(self.kinds["image"], self.kinds["text"]):
            self._branch_ok[combo] = self._first_solution(self._active(*combo), {}) is not None
        if not any(self._branch_ok.values()):
            raise self._error("constraints", "no configuration satisfies all constraints")

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        if not Path(path).is_file():
            raise ConfigError("search space file not found", file=path)
        return cls(load_yaml_mapping(path), source=path)

    # ---- parsing ---------------------------------------------------------------------
    def _error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.source, key=key)

    def _parse(self, spec: dict[str, Any]) -> None:
        self._check_keys(spec, "", {"name", "description", "embed_dim", "image", "text", "constraints", "max_grid"})
        self.name = str(spec.get("name") or Path(self.source).stem)
        self.description = str(spec.get("description", ""))
        self.embed_dim = self._positive_int(spec.get("embed_dim", 512), "embed_dim")
        self.max_grid = self._positive_int(spec.get("max_grid", DEFAULT_MAX_GRID), "max_grid")
        for tower in ("image", "text"):
            section = spec.get(tower, {"kind": "teacher"} if tower == "text" else None)
            if not isinstance(section, dict):
                raise self._error(tower, "missing or not a mapping")
            self._check_keys(section, tower, {"kind", *_KINDS[tower]})
            kinds = self._choice_list(section.get("kind"), f"{tower}.kind")
            for kind in kinds:
                if kind not in _KINDS[tower]:
                    raise self._error(f"{tower}.kind", f"unknown kind {kind!r}, expected one of {_KINDS[tower]}"
                                      + did_you_mean(str(kind), _KINDS[tower]))
                if kind != "teacher" and not isinstance(section.get(kind), dict):
                    raise self._error(f"{tower}.{kind}", f"kind {kind!r} is searchable but its dimensions are missing")
            self.kinds[tower] = tuple(kinds)
            for kind in _KINDS[tower]:
                if kind in section and kind not in kinds:
                    continue  # declared but not selectable: ignored on purpose (lets a space toggle branches)
                if kind in section:
                    self._parse_branch(f"{tower}.{kind}", section[kind])
        constraints = spec.get("constraints", []) or []
        if not isinstance(constraints, list):
            raise self._error("constraints", "must be a list of expressions")
        for i, text in enumerate([*constraints, *_BUILTIN_CONSTRAINTS]):
            key = f"constraints[{i}]" if i < len(constraints) else "built-in constraint"
            try:
                c = Constraint(str(text))
            except ValueError as exc:
                raise self._error(key, str(exc)) from None
            declared = set(self.dims) | {f"{t}.kind" for t in self.kinds}
            unknown = c.names - declared
            if unknown and i < len(constraints):
                name = sorted(unknown)[0]
                raise self._error(key, f"unknown dimension {name!r}" + did_you_mean(name, declared))
            if unknown:
                continue  # a built-in constraint on a branch this space does not use
            for name in c.names:
                if name in self.dims and not self.dims[name].discrete:
                    raise self._error(key, f"constraint on continuous range {name!r}: give it a step or choices")
            self.constraints.append(c)

    def _parse_branch(self, branch: str, section: Any) -> None:
        if not isinstance(section, dict):
            raise self._error(branch, "must be a mapping of dimensions")
        types = _BRANCH_DIMS[branch]
        self._check_keys(section, branch, set(types))
        missing = _REQUIRED[branch] - set(section)
        if missing:
            raise self._error(branch, f"missing dimension(s): {', '.join(sorted(missing))}")
        if branch == "image.vit" and ("heads" in section) == ("head_width" in section):
            raise self._error(branch, "give exactly one of heads or head_width")
        for dim, typ in types.items():
            if dim in section:
                name = f"{branch}.{dim}"
                self.dims[name] = self._parse_dim(name, section[dim], typ)

    def _parse_dim(self, name: str, raw: Any, typ: type) -> Dimension:
        if isinstance(raw, dict):
            self._check_keys(raw, name, {"low", "high", "step", "log"})
            if "low" not in raw or "high" not in raw:
                raise self._error(name, "a range needs low and high")
            if typ is str:
                raise self._error(name, "a range is not allowed here: give a list of names")
            low, high = self._number(raw["low"], typ, f"{name}.low"), self._number(raw["high"], typ, f"{name}.high")
            step = self._number(raw["step"], typ, f"{name}.step") if raw.get("step") is not None else None
            log = raw.get("log", False)
            if not isinstance(log, bool):
                raise self._error(f"{name}.log", f"expected true or false, got {log!r}")
            if low > high:
                raise self._error(name, f"empty range: low {low} > high {high}")
            if step is not None and step <= 0:
                raise self._error(f"{name}.step", "must be positive")
            if log and (low <= 0 or (step is not None and step != 1)):
                raise self._error(name, "a log range needs low > 0 and no step")
            self._check_value(name, low)
            return Dimension(name, low=low, high=high, step=step, log=log, is_int=typ is int)
        values = self._choice_list(raw, name)
        values = [self._number(v, typ, name) if typ is not str else self._string(v, name) for v in values]
        for v in values:
            self._check_value(name, v)
        if len(set(values)) != len(values):
            raise self._error(name, f"duplicate choices in {values}")
        return Dimension(name, choices=tuple(values))

    def _check_value(self, name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and value <= 0:
            raise self._error(name, f"must be positive, got {value}")

    def _choice_list(self, raw: Any, key: str) -> list:
        if raw is None:
            raise self._error(key, "missing value")
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise self._error(key, "empty choice list")
        return values

    def _number(self, value: Any, typ: type, key: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(key, f"expected {typ.__name__}, got {value!r}")
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise self._error(key, f"expected int, got {value!r}")
            return int(value)
        return float(value)

    def _string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self._error(key, f"expected a non-empty name, got {value!r}")
        return value

    def _positive_int(self, value: Any, key: str) -> int:
        value = self._number(value, int, key)
        if value <= 0:
            raise self._error(key, f"must be positive, got {value}")
        return value

    def _check_keys(self, section: dict, where: str, allowed: set[str]) -> None:
        for key in section:
            if key not in allowed:
                full = f"{where}.{key}" if where else str(key)
                raise self._error(full, "unknown key" + did_you_mean(str(key), allowed))

    def branches(self) -> list[tuple[str, str]]:
        """The (image kind, text kind) pairs some student of the space has: with more than one, the
        space is conditional (a dimension exists only in some branches)."""
        return [combo for combo, ok in self._branch_ok.items() if ok]

    # ---- sampling ----------------------------------------------------------------------
    def _active(self, image_kind: str, text_kind: str) -> list[Dimension]:
        prefixes = (f"image.{image_kind}.", f"text.{text_kind}.")
        return [d for name, d in self.dims.items() if name.startswith(prefixes)]

    def _applicable(self, values: dict[str, Any]) -> list[Constraint]:
        return [c for c in self.constraints if c.names <= values.keys()]

    def _consistent(self, values: dict[str, Any], new: str) -> bool:
        return all(c.holds(values) for c in self._applicable(values) if new in c.names)

    def _constrained(self, dims: list[Dimension]) -> list[Dimension]:
        names = set().union(*(c.names for c in self.constraints)) if self.constraints else set()
        return [d for d in dims if d.name in names]

    def _first_solution(self, dims: list[Dimension], values: dict[str, Any]) -> dict | None:
        """Depth-first search for a completion of the constrained dimensions in ``dims``."""
        todo = [d for d in self._constrained(dims) if d.name not in values]
        if not todo:
            return values
        dim, rest = todo[0], todo[1:]
        for v in dim.values():
            trial = {**values, dim.name: v}
            if self._consistent(trial, dim.name) and self._first_solution(rest, trial) is not None:
                return trial
        return None

    def suggest(self, trial: Any, embed_dim: int | None = None) -> StudentConfig:
        """Sample one valid StudentConfig through an Optuna trial (any sampler)."""
        return self._sample(trial, embed_dim)[0]

    def draws(self, seed: int, embed_dim: int | None = None) -> Iterator[StudentConfig]:
        """Students without end, as a search's random sampler draws them (Optuna's RandomSampler
        seeded with ``seed``): the same seed gives the same students in the same order."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        while True:
            trial = study.ask()
            student = self.suggest(trial, embed_dim=embed_dim)
            study.tell(trial, 0.0)
            yield student

    def sample(self, rng: Any, embed_dim: int | None = None) -> StudentConfig:
        """One valid StudentConfig drawn by the space's own distribution (what Optuna's random
        sampler draws: each branch and each dimension uniform among its allowed values), from a
        ``numpy.random.Generator``."""
        return self._sample(_RandomTrial(rng), embed_dim)[0]

    def admits(self, values: dict[str, Any]) -> bool:
        """Whether some student of the space has these dotted dimension values
        (e.g. ``{"image.vit.image_size": 64, "image.vit.patch_size": 4}``)."""
        for (image_kind, text_kind), ok in self._branch_ok.items():
            active = self._active(image_kind, text_kind)
            if not ok or not set(values) <= {d.name for d in active} \
                    or not all(self.dims[n].admits(v) for n, v in values.items()):
                continue
            if all(c.holds(values) for c in self._applicable(values)) \
                    and self._first_solution(active, dict(values)) is not None:
                return True
        return False

    def contains(self, config: StudentConfig) -> bool:
        """Whether ``config`` is one of this space's students (every dimension and constraint)."""
        values = _assignment(config)
        if values["image.kind"] not in self.kinds["image"] or values["text.kind"] not in self.kinds["text"]:
            return False
        for dim in self._active(values["image.kind"], values["text.kind"]):
            value = values.get(dim.name)
            if value is None or not dim.admits(value):
                return False
        return all(c.holds(values) for c in self._applicable(values))

    def _sample(self, trial: Any, embed_dim: int | None) -> tuple[StudentConfig, dict[str, Any]]:
        image_choices = tuple(k for k in self.kinds["image"] if any(self._branch_ok[(k, t)] for t in self.kinds["text"]))
        image_kind = trial.suggest_categorical("image.kind", list(image_choices)) if len(image_choices) > 1 \
            else image_choices[0]
        text_choices = tuple(t for t in self.kinds["text"] if self._branch_ok[(image_kind, t)])
        text_kind = trial.suggest_categorical("text.kind", list(text_choices)) if len(text_choices) > 1 \
            else text_choices[0]
        values: dict[str, Any] = {"image.kind": image_kind, "text.kind": text_kind}
        active = self._active(image_kind, text_kind)
        constrained = {d.name for d in self._constrained(active)}
        for dim in active:
            allowed = None
            if dim.name in constrained:
                allowed = tuple(v for v in dim.values()
                                if self._consistent({**values, dim.name: v}, dim.name)
                                and self._first_solution(active, {**values, dim.name: v}) is not None)
            # a value forced by the constraints is not a choice: no Optuna parameter for it
            values[dim.name] = allowed[0] if allowed is not None and len(allowed) == 1 else dim.suggest(trial, allowed)
        return self._to_config(values, embed_dim), values

    def _to_config(self, v: dict[str, Any], embed_dim: int | None) -> StudentConfig:
        if v["image.kind"] == "vit":
            width = v["image.vit.width"]
            heads = v.get("image.vit.heads") or width // v["image.vit.head_width"]
            vision = VisionTowerConfig(kind="vit", image_size=v["image.vit.image_size"], layers=v["image.vit.layers"],
                                       width=width, heads=heads, mlp_ratio=float(v["image.vit.mlp_ratio"]),
                                       patch_size=v["image.vit.patch_size"])
        else:
            extra = {k: v[f"image.timm.{n}"] for k, n in (("timm_pool", "pool"), ("timm_proj", "proj"))
                     if f"image.timm.{n}" in v}
            vision = VisionTowerConfig(kind="timm", image_size=v["image.timm.image_size"],
                                       timm_model=v["image.timm.model"], **extra)
        if v["text.kind"] == "transformer":
            p = "text.transformer."
            text = TextTowerConfig(kind="transformer", layers=v[p + "layers"], width=v[p + "width"],
                                   heads=v[p + "heads"], context_length=v[p + "context_length"],
                                   mlp_ratio=float(v.get(p + "mlp_ratio", 4.0)))
        else:
            text = TextTowerConfig(kind="teacher")
        return StudentConfig(embed_dim=embed_dim or self.embed_dim, vision=vision, text=text)

    # ---- enumeration -------------------------------------------------------------------
    def size(self) -> int | None:
        """Number of configurations before constraints (None if a dimension is continuous)."""
        total = 0
        for (ik, tk), ok in self._branch_ok.items():
            dims = self._active(ik, tk)
            if any(not d.discrete for d in dims):
                return None
            total += math.prod(len(d.values()) for d in dims) if ok else 0
        return total

    def grid(self, embed_dim: int | None = None) -> list[StudentConfig]:
        """Every valid configuration of a discrete space (refused above ``max_grid``)."""
        return [config for config, _ in self.grid_params(embed_dim)]

    def grid_params(self, embed_dim: int | None = None) -> list[tuple[StudentConfig, dict[str, Any]]]:
        """Like :meth:`grid`, with the Optuna parameter dict of each config (for enqueueing)."""
        size = self.size()
        if size is None:
            raise ConfigError("has a continuous range: no grid (give it a step or choices)", file=self.source)
        if size > self.max_grid:
            raise ConfigError(f"{size} configurations exceed max_grid={self.max_grid}: use a sampler, "
                              "or raise max_grid in the space file", file=self.source)
        out, seen = [], set()
        for combo in self._iter_assignments():
            recorder = _AssignTrial(combo)
            config, _ = self._sample(recorder, embed_dim)
            if config.arch_key not in seen:
                seen.add(config.arch_key)
                out.append((config, recorder.params))
        return out

    def _iter_assignments(self) -> Iterator[dict[str, Any]]:
        for (ik, tk), ok in self._branch_ok.items():
            if not ok:
                continue
            dims = self._active(ik, tk)
            for combo in itertools.product(*(d.values() for d in dims)):
                values = {"image.kind": ik, "text.kind": tk, **{d.name: v for d, v in zip(dims, combo)}}
                if all(c.holds(values) for c in self._applicable(values)):
                    yield values


def _assignment(config: StudentConfig) -> dict[str, Any]:
    """The dotted dimension values of a StudentConfig (the inverse of ``_to_config``)."""
    v, t = config.vision, config.text
    out: dict[str, Any] = {"image.kind": v.kind, "text.kind": t.kind}
    if v.kind == "vit":
        out.update({"image.vit.layers": v.layers, "image.vit.width": v.width, "image.vit.heads": v.heads,
                    "image.vit.head_width": v.width // v.heads, "image.vit.mlp_ratio": v.mlp_ratio,
                    "image.vit.patch_size": v.patch_size, "image.vit.image_size": v.image_size})
    else:
        out.update({"image.timm.model": v.timm_model, "image.timm.image_size": v.image_size,
                    "image.timm.pool": v.timm_pool, "image.timm.proj": v.timm_proj})
    if t.kind == "transformer":
        out.update({"text.transformer.layers": t.layers, "text.transformer.width": t.width,
                    "text.transformer.heads": t.heads, "text.transformer.context_length": t.context_length,
                    "text.transformer.mlp_ratio": t.mlp_ratio})
    return out


class _RandomTrial:
    """A stand-in for an Optuna trial that draws every answer uniformly (as RandomSampler does)."""

    def __init__(self, rng: Any):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return choices[int(self.rng.integers(len(choices)))]

    def suggest_int(self, name, low, high, step=1, log=False):
        if log:
            return int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
        return int(low + step * self.rng.integers((high - low) // step + 1))

    def suggest_float(self, name, low, high, step=None, log=False):
        if step is not None:
            return round(low + step * int(self.rng.integers(int(math.floor((high - low) / step + 1e-9)) + 1)), 10)
        return float(math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high))


class _AssignTrial:
    """A stand-in for an Optuna trial that answers from a fixed assignment, recording names."""

    def __init__(self, values: dict[str, Any]):
        self.values, self.params = values, {}

    def _answer(self, name: str) -> Any:
        value = self.values[name.split("[", 1)[0]]
        self.params[name] = value
        return value

    def suggest_categorical(self, name, choices):
        return self._answer(name)

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._answer(name)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._answer(name)


def shipped_spaces_dir() -> Path:
    """The shipped spaces: ``dime_nas/search_spaces/``, package data (present after any install)."""
    return Path(__file__).resolve().parent / "search_spaces"


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a shipped space (``tiny`` -> dime_nas/search_spaces/tiny.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    candidate = shipped_spaces_dir() / f"{name_or_path}.yaml"
    return candidate if candidate.exists() else path
