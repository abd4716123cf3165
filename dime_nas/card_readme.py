"""The export's ``README.md``: its ``model_card.json`` in words, in the Hugging Face model-card style.

What the student is, its teacher and recipe, how to load it with open_clip and with
onnxruntime (runnable as written, from the folder), intended use and limits, the full
run's scores and, once ``dime-nas verify`` ran, a "Verified on <target>" section.
Rewritten from the card each time: the card is the record, this is its reading.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fs import write_atomic


def write_readme(export_dir: str | Path) -> Path:
    """Render ``export_dir/model_card.json`` into ``export_dir/README.md``; returns its path."""
    out = Path(export_dir)
    card = json.loads((out / "model_card.json").read_text())
    path = out / "README.md"
    write_atomic(path, render(card))
    return path


def render(card: dict[str, Any]) -> str:
    """The README text of a model card."""
    student = card["student"]
    own_text = student["text"]["kind"] == "transformer"
    lines = ["---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification",
             "tags: [clip, knowledge-distillation, dime-fm, dime-nas, onnx]", "---", "",
             f"# {card['name']}", "",
             f"A small CLIP-style student (`{card['describe']}`) found by a dime_nas architecture search for a "
             "latency budget and distilled from a frozen CLIP teacher with DIME-FM (unpaired images and "
             "sentences, the teacher's features computed once).", "",
             "## Model details", "",
             f"- architecture key: `{card['arch_key']}`; embedding width {student['embed_dim']}",
             f"- image tower: {_vision(student['vision'])}",
             "- text tower: " + (f"its own transformer ({_text(student['text'])})" if own_text
                                 else "the teacher's, frozen and copied in"),
             *[f"- {tower} tower cost: {c['params'] / 1e6:.3f} M parameters, {c['gmacs']:.4g} GMACs per sample "
               "(batch 1; FLOPs = 2 x MACs)" for tower, c in card.get("cost", {}).items()],
             f"- teacher: `{json.dumps(card.get('teacher'))}`", ""]
    lines += _recipe(card)
    lines += _usage(card, own_text)
    lines += _limits(card, own_text)
    lines += _scores(card)
    if card.get("verified"):
        lines += _verified(card["verified"])
    lines += ["## Files", "", *[f"- `{name}`: {key.replace('_', ' ')}" for key, name in card["files"].items()]]
    exported = set(card["files"].values())
    for variant in (card.get("verified") or {}).get("variants", {}).values():
        lines += [f"- `{name}`: {tower} tower, int8 ({variant['quantization']}), made by `dime-nas verify`"
                  for tower, name in variant["files"].items() if name not in exported]
    lines += ["- `model_card.json`: everything above, as data; `verification.json`: every timed session", ""]
    return "\n".join(lines)


def _vision(v: dict[str, Any]) -> str:
    if v["kind"] == "vit":
        return (f"ViT, {v['layers']} layer(s), width {v['width']}, {v['heads']} heads, MLP ratio {v['mlp_ratio']}, "
                f"{v['patch_size']} px patches at {v['image_size']} px")
    return f"timm `{v['timm_model']}` at {v['image_size']} px"


def _text(t: dict[str, Any]) -> str:
    return f"{t.get('layers')} layer(s), width {t.get('width')}, {t.get('heads')} heads, {t.get('context_length')} tokens"


def _recipe(card: dict[str, Any]) -> list[str]:
    d, data = card.get("distill") or {}, card.get("data") or {}
    lines = ["## Training", ""]
    if d:
        lines.append(f"DIME-FM distillation, {card.get('steps', d.get('steps'))} steps of {d.get('batch_size')} images "
                     f"and {d.get('text_batch_size')} independent sentences, AdamW at peak lr {d.get('lr')} "
                     f"(weight decay {d.get('weight_decay')}, {d.get('warmup_steps')} warm-up steps, then cosine); "
                     "loss weights " + ", ".join(f"{k} {v}" for k, v in (d.get("losses") or {}).items()) + ".")
    if data:
        lines.append(f"Data: {data.get('images')} images and {data.get('sentences')} sentences, unpaired, embedded "
                     "by the teacher once (the feature cache).")
    if not d and not data:
        lines.append("Exported from a checkpoint; the recipe is in the run folder it came from.")
    return lines + [""]


def _usage(card: dict[str, Any], own_text: bool) -> list[str]:
    p = card["preprocess_cfg"]
    size = p["size"][0] if isinstance(p.get("size"), list) else p.get("size")
    # before verify chose a precision, the fp32 towers the export wrote
    shipped = (card.get("shipped") or {}).get("files") or {
        tower: card["files"][f"{tower}_onnx"] for tower in ("image", "text") if f"{tower}_onnx" in card["files"]}
    lines = ["## How to use", "", "Run from this folder (or replace `.` by its path).", "",
             "With open_clip:", "", "```python",
             "import open_clip, torch",
             "from PIL import Image", "",
             'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:.")',
             'tokenizer = open_clip.get_tokenizer("local-dir:.")',
             'image = preprocess(Image.new("RGB", (64, 64), "red")).unsqueeze(0)  # your image here',
             'text = tokenizer(["a red circle", "a blue square"])',
             "with torch.no_grad():",
             "    img = model.eval().encode_image(image)",
             "    txt = model.encode_text(text)",
             "img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)",
             "probs = (100 * img @ txt.T).softmax(dim=-1)", "```", ""]
    if "image" not in shipped:
        return lines
    lines += [f"With onnxruntime alone (the shipped `{shipped['image']}`: resize to {size} px, scale to [0, 1], "
              "normalise by the mean and std below):", "", "```python",
              "import numpy as np, onnxruntime as ort",
              "from PIL import Image", "",
              f"mean, std = np.array({list(p.get('mean', []))}, np.float32), np.array({list(p.get('std', []))}, "
              "np.float32)",
              f'picture = Image.new("RGB", ({size}, {size}), "red").resize(({size}, {size}), Image.BICUBIC)  '
              "# your image here",
              "x = ((np.asarray(picture, np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]",
              f'image_embedding = ort.InferenceSession("{shipped["image"]}").run(None, {{"image": x}})[0]']
    if "text" in shipped:
        lines += ["# sentences: token ids from open_clip's tokenizer (int64, padded to the context length)",
                  "import open_clip",
                  'tokens = open_clip.get_tokenizer("local-dir:.")(["a red circle"]).numpy()',
                  f'text_embedding = ort.InferenceSession("{shipped["text"]}").run(None, {{"text": tokens}})[0]']
    return lines + ["```", ""]


def _limits(card: dict[str, Any], own_text: bool) -> list[str]:
    tasks = ", ".join((card.get("data") or {}).get("eval_tasks", [])) or "the experiment's evaluation tasks"
    return ["## Intended use and limits", "",
            "- Zero-shot classification and image-text retrieval in the domain of its distillation data; "
            f"measured on {tasks}. Outside that domain its accuracy is unknown: measure it on your data.",
            "- It learns from the teacher alone and inherits the teacher's errors and biases.",
            "- " + ("It encodes text with its own small tower." if own_text else
                    "Prompts are encoded by the teacher's text tower (included here); class embeddings can be "
                    "computed once, offline, so that only the image tower runs on the device."),
            "- Latencies hold for the device, runtime, threads and batch stated with them; other devices differ. "
            "Accuracies of the ONNX files were measured with onnxruntime on a CPU.", ""]


def _scores(card: dict[str, Any]) -> list[str]:
    metrics, test = card.get("metrics") or {}, card.get("test") or {}
    if not metrics and not test:
        return []
    lines = ["## Evaluation (full run, torch)", "", "| metric | validation | test (held out) |", "|---|---|---|"]
    for key in ("accuracy", "image_accuracy", "shifted_accuracy", "retrieval", "agreement"):
        if key in metrics or key in test:
            lines.append(f"| {key} | {_num(metrics.get(key))} | {_num(test.get(key))} |")
    return lines + ["", "The validation split chose this student among others (biased upwards); the test split "
                        "was seen by no trial and no selection.", ""]


def _verified(v: dict[str, Any]) -> list[str]:
    metric, shipped = v["metric"], v["shipped"]
    fp32 = v["variants"]["fp32"][metric]
    lines = [f"## Verified on {v['target']}", "", f"{v['target_description']}", "",
             f"Device: {_device(v['device'])}.", "",
             f"| variant | precision | test {metric} (onnxruntime) | vs fp32 (points) | latency, counted towers "
             "(ms, median [95% interval]) | time / fp32's (paired) | per tower |", "|---|---|---|---|---|---|---|"]
    for name, var in v["variants"].items():
        lo, hi = var["total_interval_ms"]
        towers = "; ".join(f"{t} {lat['median_ms']:.4g} [{lat['interval_ms'][0]:.4g}-{lat['interval_ms'][1]:.4g}]"
                           for t, lat in var["latency"].items())
        mark = " **(shipped)**" if name == shipped["variant"] else ""
        r = var["time_vs_fp32"]
        lines.append(f"| {name}{mark} | {var['precision']} | {_num(var[metric])} | "
                     f"{(var[metric] - fp32) * 100:+.1f} | {var['total_median_ms']:.4g} [{lo:.4g}-{hi:.4g}] | "
                     f"{r['ratio']:.2f} [{r['interval'][0]:.2f}-{r['interval'][1]:.2f}] | {towers} |")
    lines += ["", f"The open_clip checkpoint (torch) scores {_num(v['torch'])} on the same split.", "",
              f"**Shipped: {shipped['precision']}" + (f" ({shipped['quantization']} quantisation)"
                                                      if shipped["quantization"] else "") + f"** - {shipped['reason']}.",
              ""]
    for b in v["budgets"]:
        lines.append(f"- budget {'met' if b['passes'] else '**missed**'}: {b['text']}")
    lines += ["", f"Latency: {v['latency_convention']}; counted towers: {', '.join(v['counted_towers'])}. "
              f"Verified {v['verified_at']}.", ""]
    return lines


def _device(d: dict[str, Any]) -> str:
    parts = [str(d.get("processor") or d.get("machine") or "?"), f"{d.get('cpu_count')} cores",
             str(d.get("platform", "")), f"onnxruntime {d.get('onnxruntime')}"]
    if d.get("agent"):
        parts.insert(0, f"agent {d['agent']}")
    if d.get("load_avg_1m") is not None:
        parts.append(f"load average {d['load_avg_1m']:.2f} when measured")
    if d.get("labels"):
        parts.append(", ".join(f"{k}={val}" for k, val in d["labels"].items()))
    return ", ".join(p for p in parts if p)


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"
