"""Verify a deliverable on its target: what ships, measured as it ships.

For an export folder (``dime-nas export``, ``dime-nas find``) and a target (this machine,
or a device through its agents):

- **latency**: every exported tower at every precision (fp32 and each int8 variant
  compared, see ``quantize.py``) is timed with the target's settings, in
  ``deliverable.latency_rounds`` rounds that interleave the files so that all of them see
  the same machine state. A tower's latency is the median of all its session medians
  (each measurement splits its runs over ``target.sessions`` fresh sessions), with a
  percentile-bootstrap interval over those sessions;
- **accuracy**: zero-shot scores on the experiment's held-out **test** split, with the ONNX
  files of each precision run by onnxruntime (on this machine's CPU; image and text tower
  alike, so a damaged text file shows too), beside the open_clip checkpoint's (torch);
- **precision**: ``auto`` ships int8 when its test accuracy is within
  ``deliverable.int8_tolerance`` of fp32's and it is faster beyond the timing noise (the
  interval of its time over fp32's, paired session by session, lies wholly below 1), else
  fp32, and says why;
- **budgets**: a verdict for what ships, with its margin and whether it holds beyond the noise.

Writes ``verification.json``, adds ``verified`` and ``shipped`` to ``model_card.json`` and
rewrites the folder's ``README.md``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig
from .cost.targets import Target
from .deliverable import VERIFICATION
from .errors import ConfigError
from .fs import write_atomic
from .metrics import Budget, headline_quality

COST_BUDGETS = ("params_m", "gmacs")  # budgets read from the model card's cost, not measured here


def verify_export(export_dir: str | Path, config: ExperimentConfig, target: Target, budgets: list[Budget], *,
                  precision: str | None = None, progress: bool = True,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the deliverable in ``export_dir`` on ``target``; returns (and writes) the verification.

    Args:
        config: the experiment (test split, calibration corpus, ``deliverable`` settings).
        budgets: checked against what ships (latency on the target, test accuracy, card cost).
        precision: fp32, int8 or auto (default ``config.deliverable.precision``).
        say: receives one line per step (default: print when ``progress``).

    Raises:
        FileNotFoundError: no model card, or an ONNX file it names is missing.
        ConfigError: an export without ONNX towers, a target that cannot time ONNX files.
    """
    from .card_readme import write_readme
    from .pipeline import prepare_cache

    say = say or (print if progress else (lambda _: None))
    out = Path(export_dir)
    card = read_card(out)
    settings = config.deliverable
    precision = precision or settings.precision
    fp32 = _files_to_time(out, card, target)
    t0 = time.time()
    cache, _ = prepare_cache(config, progress=progress)
    metric = headline_quality(o.metric for o in config.objectives)

    say(f"verify: int8 variants of {', '.join(sorted(fp32))} ({', '.join(settings.quantization)})")
    files = {"fp32": fp32, **_int8_variants(out, card, fp32, settings.quantization, cache,
                                           settings.calibration_samples)}
    seconds = {"quantize": time.time() - t0}

    t0 = time.time()
    say(f"verify: test-split accuracy of the checkpoint (torch) and of {len(files)} ONNX variant(s) (onnxruntime)")
    torch_scores = _torch_scores(out, card["student"], cache)
    variants = {name: _scored_variant(name, towers, card["student"], cache, metric) for name, towers in files.items()}
    seconds["accuracy"] = time.time() - t0

    t0 = time.time()
    say(f"verify: timing {sum(len(t) for t in files.values())} file(s) on {target.name} "
        f"({settings.latency_rounds} round(s) of {target.runs} runs over {target.sessions} session(s))")
    timings, device = _time_files(files, target, settings.latency_rounds)
    for name, towers in timings.items():
        variants[name].update(latency=towers, **_total(towers, target),
                              time_vs_fp32=paired_ratio(towers, timings["fp32"], target))
    seconds["latency"] = time.time() - t0

    int8 = representative_int8(variants, metric, settings.int8_tolerance)
    shipped, reason = choose_precision(precision, variants, int8, metric, settings.int8_tolerance, target.name)
    ship = variants[shipped]
    verdicts = [budget_verdict(b, _value(b.metric, ship, card, target), ship["total_interval_ms"]
                               if b.metric == "latency_ms" else None) for b in budgets]
    result = {
        "export": str(out), "arch_key": card.get("arch_key"), "target": target.to_dict(), "device": device,
        "split": "test", "metric": metric, "torch": {"test": torch_scores, metric: torch_scores.get(metric)},
        "variants": variants, "int8": int8,
        "int8_drop": (variants["fp32"][metric] - variants[int8][metric]) if int8 else None,
        "precision_mode": precision, "int8_tolerance": settings.int8_tolerance,
        "settings": dataclasses.asdict(settings),
        "shipped": {"variant": shipped, "precision": ship["precision"], "quantization": ship["quantization"],
                    "files": ship["files"], "reason": reason},
        "budgets": verdicts, "passes": all(v["passes"] for v in verdicts),
        "latency_convention": (f"per tower: the median of {settings.latency_rounds} x {target.sessions} session "
                               f"medians (each over {target.runs // target.sessions}+ timed calls after "
                               f"{target.warmup} warm-up, batch {target.batch_size}); 95% percentile-bootstrap "
                               "interval over the sessions; total: the sum over the towers the target counts"),
        "seconds": {**seconds, "total": sum(seconds.values())},
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_atomic(out / VERIFICATION, json.dumps(result, indent=1, default=str) + "\n")
    card["verified"] = _card_summary(result)
    card["shipped"] = result["shipped"]
    write_atomic(out / "model_card.json", json.dumps(card, indent=1, default=str) + "\n")
    write_readme(out)
    return result


def _files_to_time(out: Path, card: dict[str, Any], target: Target) -> dict[str, Path]:
    """The export's fp32 ONNX towers, once the target is shown able to time each one it counts."""
    from .cost.latency import backend_class, check_target_usable

    if not backend_class(target.backend).needs_onnx:
        raise ConfigError(f"target {target.name!r} times torch modules ({target.backend}); verify measures the "
                          "exported ONNX files: choose a target whose backend times them", key="--target")
    problem = check_target_usable(target)
    if problem:
        raise ConfigError(problem, key="--target")
    fp32 = _fp32_files(out, card)
    missing = [t for t in target.towers if t not in fp32]
    if missing:
        raise ConfigError(f"target {target.name!r} counts tower(s) {missing}, but {out} exports only {sorted(fp32)}")
    return fp32


def _scored_variant(name: str, towers: dict[str, Path], student: dict[str, Any], cache: Any,
                    metric: str) -> dict[str, Any]:
    """One variant's files and its test-split scores under onnxruntime."""
    scores = _onnx_scores(towers, student, cache)
    return {"precision": "fp32" if name == "fp32" else "int8", "quantization": None if name == "fp32" else name,
            "files": {t: p.name for t, p in towers.items()}, "test": scores, metric: scores.get(metric)}


def read_card(export_dir: Path) -> dict[str, Any]:
    """The export's model card; a missing or unreadable one is named."""
    path = export_dir / "model_card.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}: is {export_dir} an export folder "
                                "(`dime-nas export`, `dime-nas find`)?")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}): export the student again") from None
    if not isinstance(card, dict) or "student" not in card or "files" not in card:
        raise ConfigError(f"{path} is not a dime-nas model card (no student or files): export the student again")
    return card


# ---- the files -----------------------------------------------------------------------------

def _fp32_files(out: Path, card: dict[str, Any]) -> dict[str, Path]:
    files = {t: out / card["files"][f"{t}_onnx"] for t in ("image", "text") if f"{t}_onnx" in card["files"]}
    if not files:
        raise ConfigError(f"{out} holds no ONNX towers (exported with --no-onnx?): export them to verify")
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is named by the model card but missing: export the student again")
    return files


def _int8_variants(out: Path, card: dict[str, Any], fp32: dict[str, Path], methods: list[str], cache: Any,
                   samples: int) -> dict[str, dict[str, Path]]:
    """{method: {tower: file}}; the export's own dynamic int8 files are used as they are."""
    from .quantize import quantize_onnx, quantized_path

    variants: dict[str, dict[str, Path]] = {}
    for method in methods:
        towers = {}
        for tower, path in fp32.items():
            exported = card["files"].get(f"{tower}_onnx_int8")
            if method == "dynamic" and exported and (out / exported).is_file():
                towers[tower] = out / exported
                continue
            feeds = _calibration(path, tower, cache, samples) if method.startswith("static") else None
            towers[tower] = quantize_onnx(path, quantized_path(path, method), method, calibration=feeds)
        variants[method] = towers
    return variants


def onnx_input(path: Path) -> tuple[str, np.dtype, list[int | str], str]:
    """(input name, dtype, shape with named dynamic axes, output name) of an ONNX file's first input."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.input[0].type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return model.graph.input[0].name, dtype, shape, model.graph.output[0].name


def _calibration(path: Path, tower: str, cache: Any, samples: int) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from the training corpus (never evaluation data), batches of up to 16."""
    from .preprocess import fit_context, to_model_input

    name, _, shape, _ = onnx_input(path)
    n = len(cache.pixels) if tower == "image" else cache.n_texts
    idx = np.linspace(0, n - 1, num=min(samples, n)).astype(np.int64)
    feeds = []
    for chunk in np.array_split(idx, max(1, len(idx) // 16)):
        if tower == "image":
            mean, std = cache.mean_std
            x = to_model_input(cache.pixels.take(chunk), int(shape[-1]), mean, std).numpy()
        else:
            x = fit_context(cache.text_tokens.take(chunk), int(shape[-1])).numpy()
        feeds.append({name: x})
    return feeds


# ---- accuracy ------------------------------------------------------------------------------

class OnnxTower(torch.nn.Module):
    """An ONNX tower run by onnxruntime, called like the torch tower (what ``evaluate_student`` takes)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from .agent.timing import session_options

        super().__init__()
        self.path = path
        self.session = ort.InferenceSession(str(path), session_options(threads or torch.get_num_threads()),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.numpy()})[0]
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{self.path.name} gives non-finite embeddings: the file is damaged; export again")
        return torch.from_numpy(out)


def _scores(image: torch.nn.Module, text: torch.nn.Module | None, context_length: int | None,
            student: dict[str, Any], cache: Any) -> dict[str, Any]:
    from .evaluate import evaluate_student

    scores = evaluate_student(image, cache, student["vision"]["image_size"], text, context_length, split="test")
    return {k: v for k, v in scores.items() if not k.startswith("teacher/")}


def _onnx_scores(towers: dict[str, Path], student: dict[str, Any], cache: Any) -> dict[str, Any]:
    """Test-split scores of one precision's files: class and caption embeddings come from its text
    tower (the teacher's, for a student that reuses it), as on a device that encodes its prompts."""
    text = towers.get("text")
    return _scores(OnnxTower(towers["image"]), OnnxTower(text) if text else None,
                   int(onnx_input(text)[2][-1]) if text else None, student, cache)


def _torch_scores(out: Path, student: dict[str, Any], cache: Any) -> dict[str, Any]:
    """Test-split scores of the exported open_clip checkpoint, loaded as a user would load it."""
    import open_clip

    from .cost.towers import towers_from_open_clip

    towers = towers_from_open_clip(open_clip.create_model(f"local-dir:{out}").eval())
    text = towers.get("text")
    return _scores(towers["image"].module, text.module if text else None,
                   int(text.input_shape[-1]) if text else None, student, cache)


# ---- latency -------------------------------------------------------------------------------

def _time_files(files: dict[str, dict[str, Path]], target: Target, rounds: int
                ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """{variant: {tower: latency}} and the device description, from ``rounds`` interleaved rounds."""
    from .cost.latency import backend_class
    from .cost.onnx_export import ExportedTower
    from .search.stats import sum_of_medians_interval

    backend = backend_class(target.backend)()
    measured: dict[tuple[str, str], list[Any]] = {}
    device: dict[str, Any] = {}
    for _ in range(rounds):
        for variant, towers in files.items():
            for tower, path in towers.items():
                name, dtype, shape, output = onnx_input(path)
                exported = ExportedTower(tower=tower, path=files["fp32"][tower], input_name=name,
                                         input_dtype=dtype.name, input_shape=tuple(shape), output_name=output,
                                         opset=0, exporter="file", parity_max_abs_diff=0.0,
                                         file_bytes=path.stat().st_size, export_seconds=0.0,
                                         int8_path=None if variant == "fp32" else path)
                precision = "fp32" if variant == "fp32" else "int8"
                m = backend.measure(exported, dataclasses.replace(target, precision=precision))
                measured.setdefault((variant, tower), []).append(m)
                device = m.machine
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (variant, tower), ms in measured.items():
        sessions = [s for m in ms for s in (m.session_medians_ms or [m.median_ms])]
        lo, hi = sum_of_medians_interval([sessions])
        out.setdefault(variant, {})[tower] = {
            "median_ms": float(np.median(sessions)), "interval_ms": [lo, hi], "session_medians_ms": sessions,
            "p90_ms": float(np.median([m.p90_ms for m in ms])), "runs": sum(m.runs for m in ms),
            "providers": ms[-1].providers, "backend": ms[-1].backend}
    return out, device


def paired_ratio(towers: dict[str, dict[str, Any]], fp32: dict[str, dict[str, Any]], target: Target
                 ) -> dict[str, Any]:
    """This variant's time over fp32's on the counted towers, session by session: the two were timed
    in the same rounds, one right after the other, so a machine that slows down between rounds
    moves both and the ratio keeps what the precision changes. Median and 95% bootstrap interval."""
    from .search.stats import sum_of_medians_interval

    mine = np.sum([towers[t]["session_medians_ms"] for t in target.towers], axis=0)
    base = np.sum([fp32[t]["session_medians_ms"] for t in target.towers], axis=0)
    ratios = mine / base
    lo, hi = sum_of_medians_interval([ratios])
    return {"ratio": float(np.median(ratios)), "interval": [lo, hi], "pairs": len(ratios)}


def _total(towers: dict[str, dict[str, Any]], target: Target) -> dict[str, Any]:
    """The latency the target counts (sum over its towers), with the interval of that sum."""
    from .search.stats import sum_of_medians_interval

    counted = [towers[t] for t in target.towers]
    lo, hi = sum_of_medians_interval([t["session_medians_ms"] for t in counted])
    return {"total_median_ms": sum(t["median_ms"] for t in counted), "total_interval_ms": [lo, hi]}


# ---- decisions -----------------------------------------------------------------------------

def representative_int8(variants: dict[str, dict[str, Any]], metric: str, tolerance: float) -> str | None:
    """The int8 variant that stands for int8: the fastest within ``tolerance`` of fp32's
    ``metric``, else (none is) the most accurate."""
    int8 = [n for n, v in variants.items() if v["precision"] == "int8"]
    if not int8:
        return None
    within = [n for n in int8 if variants["fp32"][metric] - variants[n][metric] <= tolerance]
    if within:
        return min(within, key=lambda n: variants[n]["time_vs_fp32"]["ratio"])
    return max(int8, key=lambda n: variants[n][metric])


def choose_precision(mode: str, variants: dict[str, dict[str, Any]], int8: str | None, metric: str,
                     tolerance: float, target: str) -> tuple[str, str]:
    """(variant to ship, why) for ``mode`` fp32, int8 or auto."""
    if mode == "fp32":
        return "fp32", "fp32 was asked for"
    if int8 is None:
        if mode == "int8":
            raise ConfigError("int8 was asked for, but no int8 variant was made", key="deliverable.quantization")
        return "fp32", "no int8 variant was made"
    if mode == "int8":
        return int8, f"int8 was asked for ({int8}, the fastest int8 variant within tolerance or else the most accurate)"
    f, q = variants["fp32"], variants[int8]
    drop = f[metric] - q[metric]
    ratio = q["time_vs_fp32"]
    speed = (f"int8 ({int8}) takes {ratio['ratio']:.2f}x fp32's time [{ratio['interval'][0]:.2f}-"
             f"{ratio['interval'][1]:.2f}] on {target} ({q['total_median_ms']:.4g} against "
             f"{f['total_median_ms']:.4g} ms)")
    accuracy = (f"test {metric} {q[metric]:.3f} against fp32's {f[metric]:.3f} ({-drop * 100:+.1f} points, "
                f"tolerance {tolerance * 100:g})")
    if drop > tolerance:
        return "fp32", f"int8 ({int8}) loses too much accuracy: {accuracy}"
    if ratio["interval"][0] > 1.0:
        return "fp32", f"int8 is slower: {speed}; {accuracy}"
    if not ratio["interval"][1] < 1.0:
        return "fp32", f"int8 is not faster beyond the timing noise: {speed}; {accuracy}"
    return int8, f"int8 is within the accuracy tolerance and faster: {accuracy}; {speed}"


def budget_verdict(budget: Budget, value: float | None, interval: list[float] | None = None) -> dict[str, Any]:
    """Whether ``value`` meets ``budget``, by what margin, and (with an interval) beyond the noise."""
    if value is None or not np.isfinite(value):
        return {"budget": str(budget), "value": value, "passes": False, "margin": None,
                "text": f"{budget}: {budget.metric} was not measured"}
    margin = -budget.violation(value)  # > 0: room left; < 0: over by that much
    passes = margin >= 0
    out: dict[str, Any] = {"budget": str(budget), "value": value, "passes": passes, "margin": margin,
                           "margin_fraction": margin / abs(budget.value) if budget.value else None}
    unit = " ms" if budget.metric == "latency_ms" else ""
    text = (f"{budget}: {value:.4g}{unit} {'passes' if passes else 'misses'} by {abs(margin):.3g}{unit}"
            + (f" ({abs(out['margin_fraction']):.0%})" if out["margin_fraction"] is not None else ""))
    if interval is not None:
        out["interval"] = list(interval)
        out["beyond_noise"] = all((budget.violation(v) <= 0) == passes for v in interval)
        text += (f", interval [{interval[0]:.4g}-{interval[1]:.4g}]"
                 + (" wholly on that side" if out["beyond_noise"] else ": within the timing noise"))
    out["text"] = text
    return out


def _value(metric: str, ship: dict[str, Any], card: dict[str, Any], target: Target) -> float | None:
    if metric == "latency_ms":
        return ship["total_median_ms"]
    if metric in COST_BUDGETS:
        per_tower = [card.get("cost", {}).get(t, {}) for t in target.towers]
        key = "params" if metric == "params_m" else "gmacs"
        values = [c.get(key) for c in per_tower]
        if any(v is None for v in values):
            return None
        return sum(values) / (1e6 if metric == "params_m" else 1.0)
    return ship["test"].get(metric)


def _card_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The verification as the model card keeps it (verification.json has every session)."""
    metric = result["metric"]
    return {"target": result["target"]["name"], "target_description": result["target"]["description"],
            "device": result["device"], "split": "test", "metric": metric, "torch": result["torch"][metric],
            "variants": {n: {"precision": v["precision"], "quantization": v["quantization"], metric: v[metric],
                             "files": v["files"], "total_median_ms": v["total_median_ms"],
                             "total_interval_ms": v["total_interval_ms"], "time_vs_fp32": v["time_vs_fp32"],
                             "latency": {t: {"median_ms": lat["median_ms"], "interval_ms": lat["interval_ms"]}
                                         for t, lat in v["latency"].items()}}
                         for n, v in result["variants"].items()},
            "int8": result["int8"], "int8_drop": result["int8_drop"], "shipped": result["shipped"],
            "budgets": result["budgets"], "passes": result["passes"], "counted_towers": result["target"]["towers"],
            "latency_convention": result["latency_convention"], "verified_at": result["verified_at"]}
