"""Rebuild the shipped `tiny-world` weights: `python -m library.world.pretrain --out DIR`.

Pretrains the built-in tiny architecture (configs/tiny, unchanged) on the shapes
world: VAE first, then UNet + text encoder jointly. Writes
`tiny_world.safetensors` (fp16, keys `unet.*`, `vae.*`, `text_encoder.*` in the
diffusers/transformers module layouts) and `tiny_world.json` (recipe, seed,
command, durations, losses, latent statistics). Deterministic on CPU for a given
torch version and thread count (`--threads`, default 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from library.data.text import tokenize_captions
from library.fileio import atomic_path, atomic_write_text
from library.models.configs import load_family_configs
from library.models.modules import build_text_encoder, build_unet, build_vae
from library.models.tokenizer import load_tokenizer
from library.world.generator import HELD_BACK_SHAPE, WORLD_SHAPES, generate_world
from library.world.recipe import (DiffusionData, encode_posteriors, fold_latent_normalisation, train_diffusion,
                                  train_vae)

WEIGHTS_NAME = "tiny_world.safetensors"
PROVENANCE_NAME = "tiny_world.json"


@dataclass
class Recipe:
    """Every number that decides the shipped weights (recorded in the provenance JSON)."""

    seed: int = 1234
    world_images: int = 12000
    vae_steps: int = 3500
    vae_full_steps: int = 250
    vae_crop: int = 32
    vae_batch: int = 8
    vae_lr: float = 2e-3
    vae_kl_weight: float = 2e-6
    vae_colour_weight: float = 10.0
    vae_logvar_init: float = -6.0
    vae_latent_offset: float = 0.5  # see recipe.train_vae: clean backgrounds, colour 1.00 vs 0.97 at 0
    unet_steps: int = 2000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    te_lr: float = 1e-3
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    unet_min_snr_gamma: float = 5.0


def build_modules(seed: int) -> dict[str, torch.nn.Module]:
    """The tiny architecture from the package's shipped configs, seeded random init."""
    configs = load_family_configs("tiny")
    torch.manual_seed(seed)
    return {"unet": build_unet(configs["unet"]), "vae": build_vae(configs["vae"]),
            "text_encoder": build_text_encoder(configs["text_encoder"])}


def pretrain(recipe: Recipe, device: str = "cpu", log=print) -> tuple[dict[str, torch.Tensor], dict]:
    """Run both phases; return the fp32 state dict to ship and the provenance facts."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator(device).manual_seed(recipe.seed)
    t0 = time.perf_counter()
    world = generate_world(recipe.world_images, recipe.seed)
    images = torch.from_numpy(world.images).to(device)
    gen_seconds = time.perf_counter() - t0
    log(f"world: {len(world)} images in {gen_seconds:.1f}s")
    modules = {k: m.to(device) for k, m in build_modules(recipe.seed).items()}
    vae = modules["vae"]
    vae_result = train_vae(vae, images, steps=recipe.vae_steps, batch_size=recipe.vae_batch, lr=recipe.vae_lr,
                           kl_weight=recipe.vae_kl_weight, generator=gen, crop=recipe.vae_crop,
                           full_steps=recipe.vae_full_steps, colour_weight=recipe.vae_colour_weight,
                           logvar_init=recipe.vae_logvar_init, latent_offset=recipe.vae_latent_offset, log=log)
    vae.requires_grad_(False)
    mean, std = encode_posteriors(vae, images)
    stats = fold_latent_normalisation(vae, mean, std)
    log(f"latent channel std before folding {['%.3f' % s for s in stats['channel_std']]}")
    gain = torch.tensor(stats["channel_gain"], device=mean.device)[None, :, None, None]
    shift = torch.tensor(stats["channel_mean"], device=mean.device)[None, :, None, None]
    mean, std = (mean - shift) * gain, std * gain  # what the folded encoder now outputs (saves a re-encode)
    tok = load_tokenizer()  # ids exactly as the trainer makes them (library.data.text)
    empty = tokenize_captions(tok, [""])[0]
    data = DiffusionData(mean, std, tokenize_captions(tok, world.captions).to(device), empty.to(device))
    scheduler = DDPMScheduler.from_config(load_family_configs("tiny")["scheduler"])
    unet_result, ema_unet, ema_te = train_diffusion(
        modules["unet"], modules["text_encoder"], scheduler, data, steps=recipe.unet_steps,
        batch_size=recipe.unet_batch, lr=recipe.unet_lr, te_lr=recipe.te_lr,
        caption_dropout=recipe.caption_dropout, ema_decay=recipe.ema_decay, generator=gen,
        min_snr_gamma=recipe.unet_min_snr_gamma, log=log)
    shipped = {"unet": ema_unet.shadow, "vae": vae, "text_encoder": ema_te.shadow}
    state = {f"{name}.{k}": v.detach().cpu() for name, m in shipped.items() for k, v in m.state_dict().items()}
    facts = {
        "world_generation_seconds": round(gen_seconds, 1),
        "vae": dataclasses.asdict(vae_result), "diffusion": dataclasses.asdict(unet_result),
        "latent_statistics_before_folding": stats,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "process_cpu_seconds": round(time.process_time(), 1),  # on a shared machine, wall time >> CPU time
    }
    return state, facts


def save_weights(state: dict[str, torch.Tensor], out_dir: Path, recipe: Recipe, facts: dict,
                 command: list[str]) -> Path:
    """Write the fp16 safetensors file and its provenance JSON, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in sorted(state.items())}
    meta = {"lorasmith.model": "tiny-world", "lorasmith.architecture": "tiny",
            "lorasmith.seed": str(recipe.seed)}
    weights = out_dir / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    weights.chmod(0o644)  # shipped package data: readable by everyone whatever the umask
    provenance = {
        "model": "tiny-world", "architecture_configs": "library/models/configs/tiny (unchanged)",
        "command": " ".join(command), "recipe": dataclasses.asdict(recipe),
        "world": {"shapes": list(WORLD_SHAPES), "held_back_shape": HELD_BACK_SHAPE},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
        "weights_file": WEIGHTS_NAME, "weights_bytes": weights.stat().st_size, **facts,
    }
    atomic_write_text(out_dir / PROVENANCE_NAME, json.dumps(provenance, indent=2) + "\n")
    return weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m library.world.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for tiny_world.safetensors and .json")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; results depend on it. 1 is fastest on a shared machine (no OpenMP spin)")
    p.add_argument("--device", default="cpu", help="cpu (deterministic, the shipped build) or cuda (experiments)")
    for f in dataclasses.fields(Recipe):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})

    def log(msg: str) -> None:
        print(msg, flush=True)

    state, facts = pretrain(recipe, device=args.device, log=log)
    weights = save_weights(state, args.out, recipe, facts, ["python", "-m", "library.world.pretrain"] + sys.argv[1:])
    log(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) in {facts['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
