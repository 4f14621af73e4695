"""A1111's hires fix rules as pure functions: target size, second-pass schedule, infotext fields.

txt2img with hires fix samples at the base size first, upscales (latent or image),
then runs an img2img pass at the target size. The rules here are A1111's
(processing.py, StableDiffusionProcessingTxt2Img): the size comes from `hr_scale`
unless `hr_resize_x/y` is set; a resize with both sides keeps the first pass's aspect
ratio and crops the excess (whole latent cells, 8 px) afterwards. The second pass
always uses the "fixed steps" img2img convention: it runs exactly
`hr_second_pass_steps or steps` steps, taken from the end of a schedule of
int(requested / min(denoising, 0.999)) steps.
"""
from __future__ import annotations

from dataclasses import dataclass

from library.errors import SamplingError

LATENT_FACTOR = 8  # pixels per latent cell (A1111's opt_f)
LATENT_UPSCALERS = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}


@dataclass(frozen=True)
class HiresTarget:
    """Where the second pass samples: upscale_to (w, h) then a crop of truncate (x, y) latent cells."""

    upscale_to: tuple[int, int]
    truncate: tuple[int, int] = (0, 0)

    @property
    def final_size(self) -> tuple[int, int]:
        """Pixel size of the finished image (upscale_to less the cropped cells)."""
        return (self.upscale_to[0] - LATENT_FACTOR * self.truncate[0],
                self.upscale_to[1] - LATENT_FACTOR * self.truncate[1])


def hires_target(width: int, height: int, hr_scale: float = 2.0, hr_resize_x: int = 0,
                 hr_resize_y: int = 0) -> HiresTarget:
    """A1111's calculate_target_resolution: `width`/`height` are the first pass (base) size."""
    if width <= 0 or height <= 0:
        raise SamplingError(f"hires fix: first-pass size {width}x{height} must be positive")
    if hr_resize_x < 0 or hr_resize_y < 0:
        raise SamplingError(f"--hr_resize_x/--hr_resize_y must be 0 (unset) or positive, got {hr_resize_x}x{hr_resize_y}")
    if hr_resize_x == 0 and hr_resize_y == 0:
        if hr_scale <= 0:
            raise SamplingError(f"--hr_scale must be positive, got {hr_scale}")
        return HiresTarget((int(width * hr_scale), int(height * hr_scale)))
    if hr_resize_y == 0:
        return HiresTarget((hr_resize_x, hr_resize_x * height // width))
    if hr_resize_x == 0:
        return HiresTarget((hr_resize_y * width // height, hr_resize_y))
    if width / height < hr_resize_x / hr_resize_y:
        to = (hr_resize_x, hr_resize_x * height // width)
    else:
        to = (hr_resize_y * width // height, hr_resize_y)
    return HiresTarget(to, ((to[0] - hr_resize_x) // LATENT_FACTOR, (to[1] - hr_resize_y) // LATENT_FACTOR))


def second_pass_steps(steps: int, hr_second_pass_steps: int, denoising_strength: float) -> tuple[int, int]:
    """(schedule length, steps actually run) of the hires pass: A1111's setup_img2img_steps with steps given.

    The pass runs `hr_second_pass_steps or steps` steps — the last ones of a schedule
    int(requested / min(denoising, 0.999)) long; denoising 0 runs nothing.
    """
    if hr_second_pass_steps < 0:
        raise SamplingError(f"--hr_second_pass_steps must be 0 (same as --steps) or positive, got {hr_second_pass_steps}")
    if not 0.0 <= denoising_strength <= 1.0:
        raise SamplingError(f"--denoising_strength must be within 0..1, got {denoising_strength}")
    requested = hr_second_pass_steps or steps
    if denoising_strength <= 0:
        return 0, 0
    return int(requested / min(denoising_strength, 0.999)), requested


def hires_infotext(hr_scale: float, hr_resize_x: int, hr_resize_y: int, hr_second_pass_steps: int,
                   hr_upscaler: str, denoising_strength: float) -> dict[str, object]:
    """The infotext fields A1111 adds for hires fix, in its order.

    `Hires upscale` when sized by scale, else `Hires resize: WxH` (as typed, 0 kept);
    `Hires steps` only when a second-pass count was set (0 means "same as Steps").
    """
    fields: dict[str, object] = {"Denoising strength": denoising_strength}
    if hr_resize_x == 0 and hr_resize_y == 0:
        fields["Hires upscale"] = hr_scale
    else:
        fields["Hires resize"] = f"{hr_resize_x}x{hr_resize_y}"
    if hr_second_pass_steps:
        fields["Hires steps"] = hr_second_pass_steps
    fields["Hires upscaler"] = hr_upscaler
    return fields
