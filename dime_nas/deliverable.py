"""The deliverable of a full run: open_clip checkpoint + model config, ONNX towers, model card.

Output folder::

    open_clip_config.json        {"model_cfg", "preprocess_cfg"}: open_clip's local-dir format
    open_clip_model.safetensors  the complete CLIP (student image tower + its text tower, or
                                 the teacher's frozen text tower copied in)
    <name>.json                  the bare model config, for open_clip.add_model_config
    image.onnx, image.int8.onnx  ONNX image tower (dynamic batch), int8 variant
    text.onnx, text.int8.onnx    ONNX text tower
    model_card.json              architecture key, config, teacher, data, metrics, cost, files
    README.md                    the card in words (Hugging Face style): how to load it, limits, scores
    verification.json            after `dime-nas verify`: accuracy and latency per precision on a target

Load with ``open_clip.create_model('local-dir:DIR')``, or
``open_clip.add_model_config('DIR/<name>.json')`` then
``open_clip.create_model('<name>', pretrained='DIR/open_clip_model.safetensors')``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .card_readme import write_readme
from .student import StudentConfig, build_student, write_open_clip_config
from .teacher import save_checkpoint_dir

VERIFICATION = "verification.json"
# CLIP attributes that make up its text tower (open_clip.model.CLIP keeps them at top level)
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def assemble_clip(config: StudentConfig, towers: Any, teacher: Any = None) -> torch.nn.Module:
    """A complete open_clip CLIP from trained student towers (+ the teacher's text tower)."""
    text_cfg = teacher.text_cfg if config.text.kind == "teacher" else None
    if config.text.kind == "teacher" and teacher is None:
        raise ValueError("this student reuses the teacher's text tower: the teacher is needed to export it")
    clip = build_student(config, text_cfg)
    state = {f"visual.{k}": v for k, v in towers.visual.state_dict().items()}
    source = towers.text.state_dict() if towers.text is not None else {
        k: v for k, v in teacher.model.state_dict().items() if k.startswith(_TEXT_PREFIXES)}
    state.update({k: v for k, v in source.items() if k.startswith(_TEXT_PREFIXES)})
    if teacher is not None and "logit_scale" in teacher.model.state_dict():
        state["logit_scale"] = teacher.model.state_dict()["logit_scale"]
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("logit_scale", "logit_bias", "attn_mask")]
    if missing or unexpected:
        raise RuntimeError(f"student weights do not fit the CLIP model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return clip.eval()


def export_student(config: StudentConfig, towers: Any, out_dir: str | Path, *, preprocess_cfg: dict[str, Any],
                   teacher: Any = None, card: dict[str, Any] | None = None, onnx: bool = True,
                   int8: bool = True) -> dict[str, Any]:
    """Write the checkpoint, ONNX towers and model card; returns the card."""
    from .cost.onnx_export import export_tower
    from .cost.flops import tower_cost
    from .cost.towers import towers_from_open_clip

    out = Path(out_dir)
    clip = assemble_clip(config, towers, teacher)
    model_cfg = config.open_clip_config(teacher.text_cfg if teacher is not None else None)
    preprocess = {**preprocess_cfg, "size": [config.vision.image_size, config.vision.image_size]}
    name = f"dime-nas-{config.arch_key}"
    save_checkpoint_dir(clip, model_cfg, out, preprocess)
    write_open_clip_config(config, out / f"{name}.json", teacher.text_cfg if teacher is not None else None)
    files: dict[str, Any] = {"checkpoint": "open_clip_model.safetensors", "config": "open_clip_config.json",
                             "model_config": f"{name}.json"}
    cost: dict[str, Any] = {}
    for tower_name, tower in towers_from_open_clip(clip).items():
        c = tower_cost(tower)
        cost[tower_name] = {"params": c["params"], "gmacs": c["gmacs"], "gflops": c["gflops"],
                            "input_shape": c["input_shape"]}
        if onnx:
            exported = export_tower(tower, out / f"{tower_name}.onnx", int8=int8)
            files[f"{tower_name}_onnx"] = exported.path.name
            cost[tower_name]["onnx_parity_max_abs_diff"] = exported.parity_max_abs_diff
            if exported.int8_path is not None:
                files[f"{tower_name}_onnx_int8"] = exported.int8_path.name
                cost[tower_name]["int8_cosine_mean"] = exported.int8_cosine_mean
                cost[tower_name]["int8_cosine_min"] = exported.int8_cosine_min
    model_card = {"name": name, "arch_key": config.arch_key, "describe": config.describe(),
                  "student": config.to_dict(), "open_clip_model_cfg": model_cfg, "preprocess_cfg": preprocess,
                  "teacher": teacher.identity if teacher is not None else None, "cost": cost, "files": files,
                  "load": {"open_clip": f"open_clip.create_model('local-dir:{out}')"},
                  "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(card or {})}
    (out / "model_card.json").write_text(json.dumps(model_card, indent=1, default=str) + "\n")
    (out / VERIFICATION).unlink(missing_ok=True)  # it verified the files just replaced
    write_readme(out)
    return model_card


def run_card(config: Any, cache: Any, steps: int, full_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model card says about the run a student came from: the full run's recipe (``steps``
    taken), the data, and its scores when ``full_run`` (its ``distill_results.json`` entry) is given."""
    import dataclasses

    from .config import SHORT_RUN_ONLY

    recipe = {k: v for k, v in dataclasses.asdict(config.full_distill).items() if k not in SHORT_RUN_ONLY}
    card: dict[str, Any] = {"steps": steps, "distill": {**recipe, "steps": steps}, "data": cache.summary()}
    if full_run is not None:
        card["metrics"], card["test"] = full_run["full"], full_run.get("test", {})
    return card
