"""Pre-registered students: a list file read back exactly, a stratified random draw written to
one, and the check that a list was committed before anything in it is trained.

A student list holds one student per line, in the ``StudentConfig.describe()`` form
(``vit L2 W64 H2 mlp4 p8 @48px + text=teacher``) or as StudentConfig JSON; ``#`` starts a
comment line. A draw samples the space the way a random-sampler search does
(``SearchSpace.suggest`` through Optuna's ``RandomSampler``), keeps each student its image
family still needs, skips students already used elsewhere and repeats, and writes the list
with its seed, space and quotas in the header, so the same command redraws it exactly.
"""
from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

_VIT = re.compile(r"vit L(\d+) W(\d+) H(\d+) mlp([\d.]+) p(\d+) @(\d+)px")
_TIMM = re.compile(r"timm (\S+) @(\d+)px")
_TEXT = re.compile(r"text L(\d+) W(\d+) H(\d+) ctx(\d+)")


def parse_student(line: str, embed_dim: int):
    """A StudentConfig from one list line (``describe()`` form or JSON); ValueError if neither."""
    from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig

    line = line.strip()
    if line.startswith("{"):
        data = json.loads(line)
        return StudentConfig.from_dict({**data, "embed_dim": data.get("embed_dim", embed_dim)})
    image, sep, text = line.partition(" + ")
    if not sep:
        raise ValueError("expected '<image tower> + <text tower>'")
    if m := _VIT.fullmatch(image):
        layers, width, heads, mlp, patch, size = m.groups()
        vision = VisionTowerConfig(kind="vit", image_size=int(size), layers=int(layers), width=int(width),
                                   heads=int(heads), mlp_ratio=float(mlp), patch_size=int(patch))
    elif m := _TIMM.fullmatch(image):
        vision = VisionTowerConfig(kind="timm", image_size=int(m.group(2)), timm_model=m.group(1))
    else:
        raise ValueError(f"image tower {image!r} is neither 'vit L.. W.. H.. mlp.. p.. @..px' nor 'timm NAME @..px'")
    if text == "text=teacher":
        tower = TextTowerConfig(kind="teacher")
    elif m := _TEXT.fullmatch(text):
        layers, width, heads, ctx = (int(x) for x in m.groups())
        tower = TextTowerConfig(kind="transformer", layers=layers, width=width, heads=heads, context_length=ctx)
    else:
        raise ValueError(f"text tower {text!r} is neither 'text=teacher' nor 'text L.. W.. H.. ctx..'")
    return StudentConfig(embed_dim=embed_dim, vision=vision, text=tower)


def read_students(path: str | Path, embed_dim: int) -> list:
    """The students of a list file, in order. Errors name the file and line; repeats are refused."""
    from dime_nas.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError("student list not found", file=path)
    students, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            student = parse_student(line, embed_dim)
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
            raise ConfigError(f"line {number}: {exc}", file=path) from None
        if student.arch_key in seen:
            raise ConfigError(f"line {number} repeats line {seen[student.arch_key]} ({student.describe()})", file=path)
        seen[student.arch_key] = number
        students.append(student)
    if not students:
        raise ConfigError("no students in the list", file=path)
    return students


def parse_quotas(spec: str, families: tuple[str, ...]) -> dict[str, int]:
    """``"30"`` (that many from each family) or ``"vit=30,timm=15"`` -> {family: count}."""
    if "=" not in spec:
        return {f: int(spec) for f in families}
    quotas = {}
    for part in spec.split(","):
        name, _, count = part.partition("=")
        if name.strip() not in families:
            raise ValueError(f"unknown image family {name.strip()!r} in {spec!r}; the space has {families}")
        quotas[name.strip()] = int(count)
    return quotas


def draw(space, quotas: dict[str, int], seed: int, exclude: set[str] = frozenset(), embed_dim: int | None = None,
         max_draws: int = 100_000) -> list:
    """Students drawn by the space's own random sampling (Optuna RandomSampler, ``seed``), each kept
    while its image family's quota is open, skipping repeats and any whose ``describe()`` is in
    ``exclude``. Returned in the order drawn."""
    left, picked, seen = dict(quotas), [], set()
    for student in itertools.islice(space.draws(seed, embed_dim), max_draws):
        if not any(left.values()):
            return picked
        family = student.vision.kind
        if left.get(family, 0) > 0 and student.arch_key not in seen and student.describe() not in exclude:
            seen.add(student.arch_key)
            picked.append(student)
            left[family] -= 1
    raise ValueError(f"{max_draws} draws did not fill the quotas {quotas} (still open: {left})")


def write_students(path: str | Path, students: list, header: list[str]) -> None:
    """A list file: ``header`` as comment lines, then one ``describe()`` line per student."""
    lines = [f"# {h}" for h in header] + [s.describe() for s in students]
    Path(path).write_text("\n".join(lines) + "\n")


def check_committed(path: str | Path) -> str:
    """The commit that last changed ``path``; ValueError if the file is not committed as it stands
    (pre-registration: a list is committed before any of its students is trained)."""
    path = Path(path).resolve()
    git = ["git", "-C", str(path.parent)]
    commit = subprocess.run([*git, "log", "-1", "--format=%H", "--", path.name], capture_output=True, text=True)
    if commit.returncode or not commit.stdout.strip():
        raise ValueError(f"{path} is not committed: commit the student list before running it")
    if subprocess.run([*git, "diff", "--quiet", "HEAD", "--", path.name]).returncode:
        raise ValueError(f"{path} differs from its committed version: commit it (or restore it) before running")
    return commit.stdout.strip()
