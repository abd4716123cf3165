"""The fidelity report of a pre-registered run: for each short-run candidate, how well it and the
zero-cost baselines rank the students' long-run accuracy, overall and within each image family
and text-tower kind, against the ceiling the truth's own seed noise sets.

Input: one record per student (``proxy_fidelity.py --students``), each with ``family`` (vit or
timm), ``text_kind`` (teacher or transformer), ``proxy`` (candidate -> per-seed short-run
scores), ``full`` (per-seed long-run test accuracies; the truth is their mean) and the
baselines' raw values. Everything here is computed from those records alone, so the report
recomputes from its JSON (``python experiments/benchmarks/fidelity_report.py RESULT.json``; a
result of the fixed students before pre-registration is read too, with its one long run).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

import bench_stats

GROUPS = {"all": lambda r: True, "ViT": lambda r: r["family"] == "vit", "convnet": lambda r: r["family"] == "timm",
          "teacher's text": lambda r: r["text_kind"] == "teacher",
          "own text tower": lambda r: r["text_kind"] == "transformer"}
PROXY = "proxy: short-run accuracy, mean of seeds"
ONE_SEED = "proxy: one seed (the first, what a search trial measures)"
TARGET_TAU = 0.7  # within each image family


def masks(records: list[dict]) -> dict[str, np.ndarray]:
    return {g: np.array([f(r) for r in records]) for g, f in GROUPS.items()}


def predictors(records: list[dict], candidate: str) -> dict[str, np.ndarray]:
    """Every ranking compared for one candidate, oriented so that higher predicts better."""
    col = lambda f: np.array([f(r) for r in records], dtype=float)  # noqa: E731
    return {PROXY: col(lambda r: np.mean(r["proxy"][candidate])),
            ONE_SEED: col(lambda r: r["proxy"][candidate][0]),
            "image tower against the teacher's text (image_accuracy), mean of seeds":
                col(lambda r: np.mean(r["proxy_image"][candidate])),
            "teacher agreement after the short run": col(lambda r: r["agreement_short"][candidate]),
            "training loss at step 20 (lower is better)": -col(lambda r: r["loss_step20"][candidate]),
            "image-tower MACs (more is better)": col(lambda r: r["image_mmacs"]),
            "image-tower params (more is better)": col(lambda r: r["image_params_m"]),
            **bench_stats.family_rules([r["family"] for r in records], [r["text_kind"] for r in records])}


def _cell(v: dict | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    f = "+.2f" if signed else ".2f"
    return f"{v['value' if 'value' in v else 'diff']:{f}} [{v['lo']:{f}}, {v['hi']:{f}}]"


def report(records: list[dict], setup: dict, machine: dict, n_boot: int = 2000) -> tuple[dict, str]:
    """(JSON-ready summary, Markdown) of a pre-registered fidelity run (``n_boot`` bootstrap resamples)."""
    from dime_nas.search.stats import kendall_tau

    groups = masks(records)
    truth_by_seed = np.array([r["full"] for r in records], dtype=float)
    truth = truth_by_seed.mean(1)
    names = list(setup["candidates"])
    k_long = truth_by_seed.shape[1]
    ceiling = ({g: (bench_stats.seed_agreement(kendall_tau, truth_by_seed[m]) if m.sum() >= 3 else None)
                for g, m in groups.items()} if k_long > 1 else None)
    out = {"setup": setup, "machine": machine, "students": records, "candidates": {}, "ceiling_truth_seed_vs_seed_tau":
           ceiling, "truth_seed_std_pooled": bench_stats.pooled_std(truth_by_seed) if k_long > 1 else None}
    counts = {g: int(m.sum()) for g, m in groups.items()}
    cols = list(GROUPS)
    registered = setup.get("registered_in_commit")
    shared = set(setup["short_seeds"]) & set(setup["long_seeds"])
    md = ["# Proxy fidelity" + (" on pre-registered students" if registered else "") + "\n",
          f"{len(records)} students from `{setup['students_file']}`"
          + (f" (drawn and committed before any was trained, commit {registered[:10]})" if registered else "")
          + ": " + ", ".join(f"{counts[g]} {g}" for g in cols[1:]) + ". "
          f"Short run: the demo search's trial ({setup['short_steps']} steps at batch {setup['batch']}, "
          f"{setup['text_tower_step_scale']:g}x for a student with its own text tower, final evaluation on the "
          f"search-validation split), seeds {setup['short_seeds']}. Truth: mean test-split accuracy of "
          f"{k_long} long run(s) of {setup['long_steps']} steps (seeds {setup['long_seeds']}"
          + (f"; seed {sorted(shared)} shared with a short run" if shared else ", none shared with a short run")
          + "). Cells: Kendall tau [bootstrap 95% CI over students]; n/a where a ranking ties the whole group.\n"]
    for name in names:
        preds = predictors(records, name)
        agree = {p: bench_stats.group_agreement(kendall_tau, v, truth, groups, n_boot=n_boot) for p, v in preds.items()}
        versus = {p: bench_stats.group_differences(kendall_tau, preds[PROXY], v, truth, groups, n_boot=n_boot)
                  for p, v in preds.items() if p not in (PROXY, ONE_SEED)}
        by_seed = np.array([r["proxy"][name] for r in records], dtype=float)
        noise = {"proxy_seed_std_pooled": {g: bench_stats.pooled_std(by_seed[m]) for g, m in groups.items() if m.any()}
                 if by_seed.shape[1] > 1 else None,
                 "proxy_seed_vs_seed_tau": bench_stats.seed_agreement(kendall_tau, by_seed)
                 if by_seed.shape[1] > 1 else None}
        targets = {f"tau >= {TARGET_TAU} in {g}": None if agree[PROXY][g] is None else {
                       "tau": agree[PROXY][g]["value"], "met": agree[PROXY][g]["value"] >= TARGET_TAU,
                       "short_by": max(0.0, TARGET_TAU - agree[PROXY][g]["value"])} for g in ("ViT", "convnet")}
        targets.update({f"above '{rule}' (paired lower bound > 0)": None if versus[rule]["all"] is None else {
            "diff": versus[rule]["all"]["diff"], "lo": versus[rule]["all"]["lo"], "met": versus[rule]["all"]["lo"] > 0}
            for rule in bench_stats.FAMILY_RULES})
        out["candidates"][name] = {"lr": setup["candidates"][name]["lr"], "agreement": agree,
                                   "proxy_minus_baseline": versus, "noise": noise, "targets": targets}
        md += [f"## Candidate {name}\n", "| predictor of the truth | " + " | ".join(f"{g} ({counts[g]})" for g in cols)
               + " |", "|---" * (len(cols) + 1) + "|"]
        md += [f"| {p} | " + " | ".join(_cell(agree[p][g]) for g in cols) + " |" for p in preds]
        if ceiling:
            md.append("| ceiling: the truth's seeds against each other (mean over pairs) | "
                      + " | ".join("n/a" if ceiling[g] is None else f"{ceiling[g]['mean']:.2f}" for g in cols) + " |")
        md += ["", "Proxy (mean of seeds) minus each baseline, Kendall tau, paired bootstrap over students "
               "[95% CI]:", "", "| baseline | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        md += [f"| {p} | " + " | ".join(_cell(versus[p][g], signed=True) for g in cols) + " |" for p in versus]
        md += ["", "Targets: " + "; ".join(
            f"{t}: " + ("n/a" if v is None else (f"tau {v['tau']:.2f}, " + ("met" if v["met"] else
                                                 f"missed by {v['short_by']:.2f}")) if "tau" in v else
                        f"{v['diff']:+.2f}, lower bound {v['lo']:+.2f}, " + ("met" if v["met"] else "missed"))
            for t, v in targets.items()) + "."]
        if noise["proxy_seed_std_pooled"]:
            s = noise["proxy_seed_std_pooled"]
            md.append("\nProxy seed std (pooled RMS over students): " + ", ".join(f"{g} {v:.4f}" for g, v in s.items())
                      + f"; resolvable difference (1.96 x sqrt 2 x std, all): {1.96 * math.sqrt(2) * s['all']:.3f}; "
                      f"the proxy's seeds against each other: tau {noise['proxy_seed_vs_seed_tau']['mean']:.2f}.\n")
    if len(names) > 1:
        base, rest = names[0], names[1:]
        out["candidate_differences"] = {}
        md += ["## Candidates against each other\n", f"Kendall tau of each candidate's proxy minus {base}'s, paired "
               "bootstrap over students [95% CI]:", "", "| candidate | " + " | ".join(cols) + " |",
               "|---" * (len(cols) + 1) + "|"]
        for name in rest:
            diff = bench_stats.group_differences(kendall_tau, predictors(records, name)[PROXY],
                                                 predictors(records, base)[PROXY], truth, groups, n_boot=n_boot)
            out["candidate_differences"][f"{name} minus {base}"] = diff
            md.append(f"| {name} | " + " | ".join(_cell(diff[g], signed=True) for g in cols) + " |")
        md.append("")
    if out["truth_seed_std_pooled"] is not None:
        md.append(f"Truth's own noise: seed std of a long run (pooled) {out['truth_seed_std_pooled']:.4f}; "
                  f"std of the truth across students {np.std(truth, ddof=1):.3f}.\n")
    md += ["| student | " + " | ".join(f"proxy {n} (mean of seeds)" for n in names)
           + " | truth (mean ± std of seeds) | image MMACs |", "|---" * (len(names) + 3) + "|"]
    for r, t in sorted(zip(records, truth), key=lambda x: -x[1]):
        md.append(f"| {r['describe']} | " + " | ".join(f"{np.mean(r['proxy'][n]):.3f}" for n in names)
                  + f" | {t:.3f} ± {np.std(r['full'], ddof=1) if len(r['full']) > 1 else 0:.3f} | "
                  f"{r['image_mmacs']:.1f} |")
    long_s = [x for r in records for x in r["long_train_s"]]
    short_s = [x for r in records for n in names for x in r["short_train_s"][n]]
    md.append(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, shared (load average at the end "
              f"{machine['load_avg'][0]:.1f}); torch {machine['torch']}; {setup['workers']} worker process(es) x "
              f"{setup['threads']} thread(s). Training time: long runs {sum(long_s) / 3600:.1f} h in all (median "
              f"{np.median(long_s):.0f} s, max {max(long_s):.0f} s), short runs {sum(short_s) / 3600:.1f} h in all "
              f"(median {np.median(short_s):.0f} s).\n")
    return out, "\n".join(md) + "\n"


def from_fixed_students(data: dict) -> tuple[list[dict], dict]:
    """(records, setup) of a result written before pre-registration (one long run per student,
    ``proxy_seeds`` for its one short-run setting), so that its students get the same report."""
    sizes = data["sizes"]
    name = f"lr {sizes['lr']:g}" if sizes.get("lr") is not None else "the experiment's lr"
    records = [{**{k: s[k] for k in ("arch_key", "describe", "family", "image_mmacs", "image_params_m")},
                "text_kind": s["text"], "proxy": {name: s["proxy_seeds"]},
                "proxy_image": {name: [x if x is not None else np.nan for x in s["image_proxy_seeds"]]},
                "agreement_short": {name: s["agreement_short"]}, "loss_step20": {name: s["loss_step20"]},
                "short_train_s": {name: [s["short_train_s"]]}, "full": [s["full"]], "long_train_s": [s["long_train_s"]]}
               for s in data["students"]]
    setup = {"students_file": "proxy_fidelity.py's fixed lists", "short_steps": sizes["short"], "batch": sizes["batch"],
             "text_tower_step_scale": sizes.get("text_tower_step_scale", 1.0), "short_seeds": list(range(sizes["seeds"])),
             "long_seeds": [0], "long_steps": sizes["long"], "candidates": {name: {"lr": sizes.get("lr")}},
             "workers": sizes["workers"], "threads": sizes["threads"]}
    return records, setup


def plot(records: list[dict], setup: dict, path: str | Path) -> None:
    """Proxy against truth for each candidate, by family and text kind."""
    from common import plt as pyplot

    plt = pyplot()
    names = list(setup["candidates"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for fam, mk in (("vit", "o"), ("timm", "s")):
            for text, col in (("teacher", "C0"), ("transformer", "C3")):
                sel = [r for r in records if r["family"] == fam and r["text_kind"] == text]
                if sel:
                    ax.errorbar([np.mean(r["proxy"][name]) for r in sel], [np.mean(r["full"]) for r in sel],
                                xerr=[np.std(r["proxy"][name], ddof=1) if len(r["proxy"][name]) > 1 else 0 for r in sel],
                                yerr=[np.std(r["full"], ddof=1) if len(r["full"]) > 1 else 0 for r in sel],
                                fmt=mk, c=col, label=f"{fam}, text={text}", capsize=2, ms=4)
        ax.set_title(f"candidate {name}", fontsize=9)
        ax.set_xlabel("short-run proxy (mean of seeds; bars: seed std)")
        ax.set_ylabel(f"truth: {setup['long_steps']}-step test accuracy (mean of seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":  # recompute the report from a result's JSON
    import common  # noqa: F401  (puts the repository on the path)

    data = json.loads(Path(sys.argv[1]).read_text())
    records, setup = (data["students"], data["setup"]) if "setup" in data else from_fixed_students(data)
    summary, md = report(records, setup, data["machine"])
    print(md)
