"""How well does `tiny-world` follow prompts? Prints accuracy, writes a sample grid.

    python bench/eval_tiny_world.py --weights library/models/data/tiny_world.safetensors --grid out.png

For every colour x shape of the pretraining world it samples "a <colour> <shape>"
`--per_prompt` times (Euler ancestral, CFG), labels the images with the world
classifier (library.world.classifier) and prints shape / colour / both accuracy
plus the classifier's own accuracy on real world images. Images come from the
bundled sampler (library.world.evaluate.sample_images, Euler a), so this measures
what users and the tests see.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.world.classifier import accuracy, predict, train_classifier
from library.world.evaluate import sample_images
from library.world.generator import ALL_SHAPES, COLOURS, WORLD_SHAPES, generate_world
from library.world.model import build_tiny_world_bundle


def sample(bundle, prompts: list[str], seed: int, steps: int, cfg: float) -> np.ndarray:
    """One image per prompt, seeds seed, seed+1, ...; uint8 [N,64,64,3]."""
    return sample_images(bundle, prompts, [seed + i for i in range(len(prompts))], steps=steps, cfg=cfg)


def prompt_following(images: np.ndarray, wanted: list[tuple[str, str]], classifier) -> dict[str, float]:
    """Fraction of images whose predicted shape / colour / both match the prompt's."""
    pred = predict(classifier, images)
    shape_ok = np.array([p == w[1] for p, w in zip(pred["shape"], wanted)])
    colour_ok = np.array([p == w[0] for p, w in zip(pred["colour"], wanted)])
    return {"shape": float(shape_ok.mean()), "colour": float(colour_ok.mean()),
            "both": float((shape_ok & colour_ok).mean()),
            "star_rate": float(np.mean([p == "star" for p in pred["shape"]]))}


@torch.no_grad()
def reconstruction(bundle, classifier) -> tuple[dict[str, float], np.ndarray]:
    """VAE round trip of world images and of held-back stars: pixel L1 and whether labels survive."""
    world = generate_world(64, seed=4242, shapes=ALL_SHAPES)
    x = torch.from_numpy(world.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    rec = bundle.vae.decode(bundle.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    rec_u8 = ((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    pred = predict(classifier, rec_u8)
    stars = world.shape == ALL_SHAPES.index("star")
    shape_ok = np.array([ALL_SHAPES.index(p) for p in pred["shape"]]) == world.shape
    colour_ok = np.array([tuple(COLOURS).index(p) for p in pred["colour"]]) == world.colour
    result = {"l1": float((rec - x).abs().mean()), "shape_kept": float(shape_ok.mean()),
              "colour_kept": float(colour_ok.mean()), "star_shape_kept": float(shape_ok[stars].mean())}
    return result, np.concatenate([world.images[:16], rec_u8[:16]])


def grid(images: np.ndarray, cols: int) -> Image.Image:
    rows = -(-len(images) // cols)
    canvas = np.full((rows * 64, cols * 64, 3), 255, np.uint8)
    for i, im in enumerate(images):
        canvas[(i // cols) * 64:(i // cols + 1) * 64, (i % cols) * 64:(i % cols + 1) * 64] = im
    return Image.fromarray(canvas)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--grid", type=Path, default=None)
    p.add_argument("--per_prompt", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    classifier = train_classifier(seed=0)
    check = accuracy(classifier, generate_world(500, seed=99, shapes=ALL_SHAPES))
    bundle = build_tiny_world_bundle(torch.float32, path=args.weights)
    wanted = [(c, s) for s in WORLD_SHAPES for c in COLOURS for _ in range(args.per_prompt)]
    images = sample(bundle, [f"a {c} {s}" for c, s in wanted], args.seed, args.steps, args.cfg)
    result = {"classifier_on_world": check, "prompt_following": prompt_following(images, wanted, classifier),
              "samples": len(images), "cfg": args.cfg, "steps": args.steps,
              "seconds": round(time.perf_counter() - t0, 1)}
    result["vae_reconstruction"], recon_images = reconstruction(bundle, classifier)
    base_star = sample(bundle, ["ohwx shape"] * 16 + ["a red star"] * 16, args.seed, args.steps, args.cfg)
    result["base_model_star_rate"] = float(np.mean([p == "star" for p in predict(classifier, base_star)["shape"]]))
    print(json.dumps(result, indent=2))
    if args.grid:
        grid(images, cols=args.per_prompt * 2).save(args.grid)
        grid(recon_images, cols=16).save(args.grid.with_name(args.grid.stem + "_vae.png"))
        grid(base_star, cols=16).save(args.grid.with_name(args.grid.stem + "_star_prompts.png"))


if __name__ == "__main__":
    main()
