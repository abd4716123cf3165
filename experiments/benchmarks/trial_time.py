"""Where a search trial's time goes, and what the cached teacher saves.

    python experiments/benchmarks/trial_time.py [--config experiments/demo.yaml --trials 18 --steps 240 --batch 64]

1. A demo-style search (--config, random sampler) through the library's own trial
   objective: per trial, cost measurement, training, evaluation and bookkeeping
   (the rest of the trial's wall time); teacher forward passes per trial; trials
   rejected by the latency budget before training, and the time that saved.
2. Step throughput of the cached-teacher trainer (dime_nas.distill.trainer.distill)
   against the same loop with the teacher run online on every batch, at the demo's
   shapes (ShapesWorld teacher) and at a ViT-B-32 teacher / small ViT student shape
   (random weights). Writes experiments/results/trial_time.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import common


def search_split(config, cache, text_cfg, trials: int, steps: int) -> dict:
    import optuna

    from dime_nas.search.objective import TrialContext, claim_architecture, run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config.distill = common.settings(config.distill, steps=steps, warmup_steps=max(1, steps // 10))
    ctx = TrialContext.for_experiment(config, cache, text_cfg, progress=False)
    study = optuna.create_study(directions=[o.direction for o in config.objectives],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    rows = []
    for _ in range(3 * trials):  # distinct architectures, as a search counts them (repeats capped at 3x)
        if len(rows) == trials:
            break
        trial = study.ask()
        t0 = time.time()
        values = run_trial(trial, ctx, claim_architecture(trial, ctx))
        wall = time.time() - t0
        study.tell(trial, values)
        if trial.user_attrs.get("reused_from") is not None:  # a repeat: its timings are the original's
            continue
        t = trial.user_attrs.get("timings", {})
        rows.append({"arch_key": trial.user_attrs.get("arch_key"), "status": trial.user_attrs.get("status"),
                     "wall_s": wall, "cost_s": t.get("cost_s", 0.0), "train_s": t.get("train_s", 0.0),
                     "eval_s": t.get("eval_s", 0.0), "teacher_forwards": trial.user_attrs.get("teacher_forwards", 0),
                     "text": trial.user_attrs["config"]["text"]["kind"]})
        rows[-1]["bookkeeping_s"] = wall - rows[-1]["cost_s"] - rows[-1]["train_s"] - rows[-1]["eval_s"]
        print(rows[-1], flush=True)
    return {"trials": rows}


def _time_steps(step, n: int) -> float:
    step()  # warm-up
    t0 = time.time()
    for _ in range(n):
        step()
    return n / (time.time() - t0)


def throughput(student, teacher_model, pixels, tokens, t_img, t_txt, n: int) -> dict:
    """Steps/s with cached teacher targets vs teacher forwards on every batch (same student step)."""
    import torch

    from dime_nas.distill.losses import dime_fm_losses
    from dime_nas.distill.trainer import StudentTowers

    model = StudentTowers(student)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.nn.functional.interpolate(pixels, size=student.vision.image_size)

    def cached():
        s_img, _ = model(x)
        loss = dime_fm_losses(s_img, t_img, t_txt)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def online():
        with torch.no_grad():
            ti = torch.nn.functional.normalize(teacher_model.encode_image(pixels), dim=-1)
            tt = torch.nn.functional.normalize(teacher_model.encode_text(tokens), dim=-1)
        s_img, _ = model(x)
        loss = dime_fm_losses(s_img, ti, tt)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    c, o = _time_steps(cached, n), _time_steps(online, n)
    return {"cached_steps_per_s": c, "online_steps_per_s": o, "speedup": c / o}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=20, help="short-run steps per trial (the demo uses 240)")
    p.add_argument("--throughput-steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--skip-vitb32", action="store_true")
    p.add_argument("--config", default=str(common.BENCH_YAML), help="experiment file (e.g. experiments/demo.yaml)")
    a = p.parse_args()
    import open_clip
    import torch

    from dime_nas.pipeline import teacher_spec
    from dime_nas.student import StudentConfig
    from dime_nas.teacher import load_teacher

    config, cache, text_cfg, space = common.load(a.config)
    split = search_split(config, cache, text_cfg, a.trials, a.steps)
    trained = [r for r in split["trials"] if r["status"] != "infeasible"]
    rejected = [r for r in split["trials"] if r["status"] == "infeasible"]
    mean_trained = float(np.mean([r["wall_s"] for r in trained])) if trained else 0.0
    split["rejected"] = len(rejected)
    split["saved_s"] = sum(mean_trained - r["wall_s"] for r in rejected)
    shapes = {}
    teacher = load_teacher(teacher_spec(config.teacher, progress=False))
    b = a.batch
    demo_student = space.grid(embed_dim=cache.embed_dim)[0]
    px = torch.randn(b, 3, teacher.image_size, teacher.image_size)
    tok = torch.randint(1, 100, (b, teacher.context_length))
    t_i, t_t = torch.randn(b, cache.embed_dim), torch.randn(b, cache.embed_dim)
    shapes["demo (ShapesWorld teacher)"] = {"student": demo_student.describe(),
                                            **throughput(demo_student, teacher.model, px, tok, t_i, t_t,
                                                         a.throughput_steps)}
    if not a.skip_vitb32:
        vitb = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        small = StudentConfig.from_dict({"embed_dim": 512, "vision": {"kind": "vit", "layers": 4, "width": 192,
                                                                       "heads": 3, "mlp_ratio": 4.0, "patch_size": 16,
                                                                       "image_size": 224},
                                         "text": {"kind": "teacher"}})
        px = torch.randn(b, 3, 224, 224)
        tok = torch.randint(1, 1000, (b, 77))
        shapes["ViT-B-32 teacher, small ViT student"] = {
            "student": small.describe(),
            **throughput(small, vitb, px, tok, torch.randn(b, 512), torch.randn(b, 512), a.throughput_steps)}
    data = {"sizes": vars(a), "search": split, "throughput": shapes, "load_avg_1m_at_end": os.getloadavg()[0]}
    keys = ["cost_s", "train_s", "eval_s", "bookkeeping_s"]
    md = [f"# Where a trial's time goes\n\n{a.trials} distinct trials of `{a.config.split('/')[-1]}` (random sampler, "
          f"{a.steps} training steps per trial"
          + (f" ({config.distill.text_tower_step_scale:g}x for a student with its own text tower)"
             if any(r["text"] != "teacher" for r in split["trials"]) else "")
          + f", batch {a.batch}; {os.cpu_count()}-core CPU, 1-min load average "
          f"{os.getloadavg()[0]:.1f} at the end).\n",
          "| | " + " | ".join(keys) + " | wall_s | teacher forwards |", "|---|" + "---|" * (len(keys) + 2)]
    if trained:
        md.append("| mean over trained trials | " + " | ".join(f"{np.mean([r[k] for r in trained]):.2f}" for k in keys)
                  + f" | {mean_trained:.2f} | {sum(r['teacher_forwards'] for r in split['trials'])} |")
    if rejected:
        md.append("| mean over rejected trials | " + " | ".join(f"{np.mean([r[k] for r in rejected]):.2f}"
                                                             for k in keys)
                  + f" | {np.mean([r['wall_s'] for r in rejected]):.2f} | 0 |")
    md.append(f"\nRejected before training (latency budget): {len(rejected)} of {a.trials}; time saved about "
              f"{split['saved_s']:.1f} s (each rejected trial would have cost a trained trial's mean wall time).\n")
    md += [f"Batch {b}, {a.throughput_steps} timed steps:\n", "| shape | student | cached steps/s | online steps/s | speed-up |",
           "|---|---|---|---|---|"]
    md += [f"| {k} | {v['student']} | {v['cached_steps_per_s']:.2f} | {v['online_steps_per_s']:.2f} | "
           f"{v['speedup']:.1f}x |" for k, v in shapes.items()]
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    if trained:
        ax.bar(keys, [np.mean([r[k] for r in trained]) for k in keys])
    ax.set_ylabel("seconds per trained trial")
    fig.tight_layout()
    fig.savefig(common.RESULTS / "trial_time.png", dpi=100)
    md.append("\n![](trial_time.png)\n")
    common.write("trial_time", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
