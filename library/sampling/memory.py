"""Memory options for sampling: tiled VAE decode and sliced attention (A1111's/diffusers' switches).

`--vae_tiling` decodes the latent in overlapping tiles blended across the overlap
(diffusers' AutoencoderKL tiled decode), so the decoder's activations scale with the
tile, not the image: an SD1.5 1024 px decode needs the memory of a 512 px one.
`--attention_slicing` computes attention one head-slice at a time (diffusers'
SlicedAttnProcessor), trading speed for peak memory in the UNet.
"""
from __future__ import annotations


def enable_vae_tiling(vae, tile_sample_size: int | None = None) -> None:
    """Tile the VAE's decode (and encode) above `tile_sample_size` px (default: the VAE's sample_size)."""
    vae.enable_tiling()
    if tile_sample_size:
        vae.tile_sample_min_size = int(tile_sample_size)
        vae.tile_latent_min_size = int(tile_sample_size) // 8


def enable_attention_slicing(unet, slice_size: str | int = "auto") -> None:
    """Sliced attention in every UNet attention layer ("auto" = half the heads per slice)."""
    unet.set_attention_slice(slice_size)


def apply_memory_options(bundle, vae_tiling: bool = False, attention_slicing: bool = False) -> None:
    if vae_tiling:
        enable_vae_tiling(bundle.vae)
    if attention_slicing:
        enable_attention_slicing(bundle.unet)
