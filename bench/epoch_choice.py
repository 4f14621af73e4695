"""Does the per-epoch score pick the right epoch? The long tiny-world run, every figure printed.

    python bench/epoch_choice.py --epochs 16 --out /tmp/epoch_choice

Trains the demo's held-back star (DAdaptAdam, rank 4, seed 42, constant LR so it
overfits), saving every epoch; scores every file with library.scoring.scores
(fidelity and drift at 0.6/0.8/1.0); samples every epoch at weight 1 and reads the
samples with the world classifier (library.world.epoch_choice); prints one table
with both, the classifier's best band and the recommendation, and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.scoring.scores import DEFAULT_DRIFT_THRESHOLD, epoch_of, recommend, score_files  # noqa: E402
from library.world.classifier import train_classifier  # noqa: E402
from library.world.epoch_choice import WORLD_PROMPTS, best_band, classifier_truth, star_eval_set, train_star  # noqa: E402
from library.world.model import build_tiny_world_bundle  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("epoch_choice_out"))
    p.add_argument("--learning_rate", type=float, default=1.0)
    p.add_argument("--n_concept", type=int, default=16)
    p.add_argument("--n_world", type=int, default=4)
    p.add_argument("--band_z", type=float, default=2.0, help="band: ratings within z standard errors of the best")
    p.add_argument("--drift_threshold", type=float, default=DEFAULT_DRIFT_THRESHOLD)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    folder, files = train_star(args.out, args.epochs, learning_rate=args.learning_rate)
    t_train = time.perf_counter() - t0
    bundle = build_tiny_world_bundle(torch.float32)
    t1 = time.perf_counter()
    scores = score_files(bundle, files, star_eval_set(bundle, folder))
    t_score = time.perf_counter() - t1
    rec = recommend(scores, args.drift_threshold)
    classifier = train_classifier(seed=0)
    epochs = [epoch_of(f) or args.epochs for f in files]
    truths = classifier_truth(bundle, classifier, files, epochs, n_concept=args.n_concept, n_world=args.n_world)
    band = best_band(truths, args.n_concept, args.n_world * len(WORLD_PROMPTS), args.band_z)
    by = {(s.epoch, s.weight): s for s in scores}
    print(f"{'epoch':>5} | {'fid@0.6':>7} {'fid@0.8':>7} {'fid@1':>7} | {'drift@0.6':>9} {'drift@0.8':>9} "
          f"{'drift@1':>7} | {'cls fid':>7} {'cls flex':>8} {'rating':>6} {'star':>5}")
    for e, t in zip(epochs, truths):
        f = [by[(e, w)].fidelity for w in (0.6, 0.8, 1.0)]
        d = [by[(e, w)].drift for w in (0.6, 0.8, 1.0)]
        mark = " <- recommended" if e == rec.epoch else ""
        print(f"{e:>5} | {f[0]:7.3f} {f[1]:7.3f} {f[2]:7.3f} | {d[0]:9.3f} {d[1]:9.3f} {d[2]:7.3f} | "
              f"{t.fidelity:7.2f} {t.flexibility:8.2f} {t.rating:6.2f} {t.star:5.2f}{mark}")
    print(f"classifier's best band (rating within {args.band_z:g} standard errors of the best): epochs {band}")
    print(f"recommendation: epoch {rec.epoch} at weight {rec.weight:g}: {rec.why}")
    print(f"cost: training {t_train:.0f} s; scoring {len(files)} files x 3 weights {t_score:.1f} s "
          f"({t_score / len(files):.2f} s per epoch)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epoch_choice.json").write_text(json.dumps({
        "scores": [s.to_dict() for s in scores], "truth": [vars(t) | {"rating": t.rating} for t in truths],
        "band": band, "recommendation": rec.to_dict(), "seconds_scoring": t_score}, indent=1))


if __name__ == "__main__":
    main()
