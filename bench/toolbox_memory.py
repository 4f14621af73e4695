"""Peak memory of `lorasmith lora merge` into an SD1.5-sized checkpoint (issue 19: well under 2x its size).

Writes (once) a random-weight SD1.5 single file from the shipped sd15 configs, in
fp16 (~2 GB, streamed, so making it needs no model in memory) and a rank-16 LoCon
LoRA for it, then runs the merge in a child process and reports the child's peak
RSS (ru_maxrss) against the checkpoint's size, as one JSON object.

    python bench/toolbox_memory.py [--workdir /tmp/lorasmith_sd15] [--rank 16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.lora import LoRANetwork
from library.lora.tools.output import write_safetensors_streaming
from library.models.configs import load_family_configs
from library.models.ldm_convert import COMPONENTS, POSITION_IDS_KEY, to_ldm_tensor
from library.models.ldm_keys import ldm_key_table
from library.models.modules import build_component, expected_shapes


def write_random_sd15(path: Path) -> None:
    """Every SD1.5 tensor under its LDM name, N(0, 0.02) in fp16, written one at a time."""
    configs = load_family_configs("sd15")
    specs, shapes = [], {}
    for component in COMPONENTS:
        table = ldm_key_table(component, configs[component], list(expected_shapes("sd15", component)))
        for key, shape in expected_shapes("sd15", component).items():
            ldm_shape = tuple(to_ldm_tensor(table[key], torch.empty(shape, device="meta")).shape)
            specs.append((table[key], torch.float16, ldm_shape))
            shapes[table[key]] = ldm_shape
    specs.append((POSITION_IDS_KEY, torch.int64, (1, 77)))
    generator = torch.Generator().manual_seed(0)

    def produce(name: str) -> torch.Tensor:
        if name == POSITION_IDS_KEY:
            return torch.arange(77).unsqueeze(0)
        return (torch.randn(shapes[name], generator=generator) * 0.02).half()

    write_safetensors_streaming(path, specs, produce, {"format": "pt"})


def write_lora(path: Path, rank: int) -> None:
    """A LoCon LoRA on SD1.5's targets (modules built on the meta device, adapters real)."""
    configs = load_family_configs("sd15")
    unet = build_component("unet", configs["unet"], empty=True)
    text_encoder = build_component("text_encoder", configs["text_encoder"], empty=True)
    torch.manual_seed(0)
    net = LoRANetwork.create(unet, text_encoder, rank=rank, alpha=rank / 2, conv_dim=rank // 2, conv_alpha=1)
    for adapter in net.adapters:
        torch.nn.init.normal_(adapter.lora_up.weight, std=0.01)
    net.save_weights(path, dtype="fp16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="/tmp/lorasmith_sd15")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base, out = work / "sd15_random.safetensors", work / "merged.safetensors"
    lora = work / f"locon_r{args.rank}.safetensors"
    if not base.exists():
        write_random_sd15(base)
    if not lora.exists():
        write_lora(lora, args.rank)
    start = time.time()
    cmd = [sys.executable, "-m", "library.cli", "lora", "merge", "--pretrained_model_name_or_path", str(base),
           "--lora", f"{lora}:0.8", "-o", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    size = base.stat().st_size
    print(json.dumps({"checkpoint_bytes": size, "lora_bytes": lora.stat().st_size,
                      "merge_seconds": round(time.time() - start, 1), "peak_rss_bytes": peak,
                      "peak_rss_over_checkpoint": round(peak / size, 3)}))


if __name__ == "__main__":
    main()
