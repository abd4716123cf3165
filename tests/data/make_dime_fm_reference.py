"""Computes tests/data/dime_fm_reference.json with the DIME-FM authors' released loss code.

The reference is the authors' own implementation, run unmodified: ``get_loss`` and
``compute_kl_loss`` from ``Training/utils/utils.py``, ``set_logit_scale`` (the logits) from
``Training/utils/split_network.py`` and the loss settings' defaults from ``arg_parser`` in
``Training/utils/opts.py``, all in https://github.com/sunxm2357/DIME-FM (commit
093335c492ae288f6e6e31d2352ba8eaf97a1856), with ``nn.KLDivLoss(reduction="batchmean")`` as
their ``train`` builds it. Their code is loaded from a checkout and not copied here.

The one change: ``get_loss`` moves its inputs to the GPU with ``.cuda()``; on a machine
without one that call is made the identity while it runs. The student model is the identity
too: the inputs are the student's image embeddings themselves.

Usage: ``python tests/data/make_dime_fm_reference.py PATH/TO/DIME-FM`` (writes the JSON beside
this file). tests/test_losses.py checks dime_nas's losses against the JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).with_name("dime_fm_reference.json")
# (name, the authors' command-line flags): the README's training command (P-VL on, UDist off),
# and every term on with non-default weights and temperatures (each setting is read from args)
SETTINGS = [
    ("readme", ["--use_pvl_loss"]),
    ("all_terms", ["--use_pvl_loss", "--use_udist_loss", "--w_vl_loss", "0.6", "--w_pvl_loss", "0.25",
                   "--w_udist_loss", "0.15", "--t_vl", "2.0", "--t_pvl", "4.0", "--t_udist", "5.0"]),
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(seed: int, clustered: bool, n_img: int = 5, n_txt: int = 3, dim: int = 8) -> dict[str, np.ndarray]:
    """Unnormalised float64 embeddings: image and sentence batches of different sizes.

    ``clustered``: rows near one direction, so that softmaxes at logit scale 100 stay soft;
    otherwise random directions (peaked softmaxes). The student's images are the teacher's, perturbed.
    """
    g = np.random.default_rng(seed)
    centre, spread = (np.ones(dim), 0.1) if clustered else (np.zeros(dim), 1.0)
    teacher_image = centre + spread * g.normal(size=(n_img, dim))
    teacher_text = centre + spread * g.normal(size=(n_txt, dim))
    student_image = teacher_image + 0.5 * spread * g.normal(size=(n_img, dim))
    return {"student_image": student_image, "teacher_image": teacher_image, "teacher_text": teacher_text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a checkout of github.com/sunxm2357/DIME-FM")
    root = parser.parse_args().repo / "Training" / "utils"
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    opts = _load(root / "opts.py", "dime_fm_opts")
    split_network = _load(root / "split_network.py", "dime_fm_split_network")
    utils = _load(root / "utils.py", "dime_fm_utils")

    models = {"create_logits": split_network.set_logit_scale(), "student_img_model": lambda x: x}
    kl_loss = nn.KLDivLoss(reduction="batchmean")
    cases = []
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # no GPU here: .cuda() leaves the tensor where it is
    try:
        for input_name, seed, clustered in (("clustered", 0, True), ("spread", 1, False)):
            x = inputs(seed, clustered)
            for setting, flags in SETTINGS:
                args = opts.arg_parser().parse_args(flags)
                loss, vl, pvl, udist = utils.get_loss(
                    models, torch.tensor(x["student_image"]), torch.tensor(x["teacher_image"]),
                    torch.tensor(x["teacher_text"]), args, kl_loss)
                cases.append({
                    "inputs": input_name, "setting": setting, "flags": flags,
                    "args": {k: getattr(args, k) for k in ("w_vl_loss", "w_pvl_loss", "w_udist_loss", "t_vl",
                                                           "t_pvl", "t_udist", "use_pvl_loss", "use_udist_loss")},
                    # get_loss returns the int 0 for a term it does not compute
                    "expected": {"total": float(loss), "vl": float(vl), "pvl": float(pvl), "udist": float(udist)},
                })
    finally:
        torch.Tensor.cuda = real_cuda
    out = {
        "source": "https://github.com/sunxm2357/DIME-FM, Training/utils/utils.py get_loss",
        "commit": commit or "093335c492ae288f6e6e31d2352ba8eaf97a1856",
        "made_by": "tests/data/make_dime_fm_reference.py",
        "torch": torch.__version__,
        "dtype": "float64",
        "inputs": {name: {k: v.tolist() for k, v in inputs(seed, clustered).items()}
                   for name, seed, clustered in (("clustered", 0, True), ("spread", 1, False))},
        "cases": cases,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases, authors' commit {out['commit']})", file=sys.stderr)


if __name__ == "__main__":
    main()
