"""What the user asked for, before any file is read: datasets and their subsets.

A `SubsetSpec` is one image folder with its repeats and per-folder options (a
`<repeats>_<class tokens>` folder or a `[[datasets.subsets]]` table); a
`DatasetSpec` groups subsets that share a resolution, batch size and bucket
settings (sd-scripts' `[[datasets]]`). Built either from `--train_data_dir` /
`--reg_data_dir` (see `folders.subsets_from_dirs`) or from a dataset TOML (see
`dataset_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from library.data.buckets import BucketGeometry, Reso
from library.data.captions import CaptionOptions
from library.config import MAX_RESOLUTION
from library.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Pillow's own decompression-bomb warning threshold; above it we refuse by name (raise with --max_image_pixels).
DEFAULT_MAX_PIXELS = 89_478_485
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageOptions:
    """How pixels are read: the colour under transparency and the largest accepted image.

    `alpha_mask` keeps the colours under transparency instead of compositing them, as
    sd-scripts does when the alpha is the loss mask (library/data/masks.py reads the alpha).
    """

    background: tuple[int, int, int] = WHITE
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha_mask: bool = False


def parse_color(text: str, field_name: str = "alpha_background") -> tuple[int, int, int]:
    """'white', 'gray', '#ff8800' or 'rgb(1,2,3)' as an (r, g, b) triple (Pillow's colour names)."""
    from PIL import ImageColor

    try:
        rgb = ImageColor.getrgb(str(text).strip())
    except ValueError:
        raise ConfigError(f"{field_name}: {str(text)[:40]!r} is not a colour",
                          [f"{field_name}: write a name such as white, black, gray, or #rrggbb"]) from None
    return rgb[0], rgb[1], rgb[2]


def image_options(config, alpha_mask: bool = False) -> ImageOptions:
    """The ImageOptions a config asks for (alpha_background, max_image_pixels); defaults when unset."""
    background = getattr(config, "alpha_background", None) or "white"
    max_pixels = getattr(config, "max_image_pixels", None) or DEFAULT_MAX_PIXELS
    return ImageOptions(parse_color(background), int(max_pixels), bool(alpha_mask))


@dataclass(frozen=True)
class SubsetSpec:
    """One image folder: repeats, regularization flag, caption source and augmentation."""

    image_dir: Path
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    caption_extension: str = ".caption"
    captions: CaptionOptions = field(default_factory=CaptionOptions)
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False  # the image's alpha channel is its loss mask (--masked_loss)
    mask_dir: Path | None = None  # folder of same-stem loss masks (sd-scripts' conditioning_data_dir)
    image: ImageOptions = field(default_factory=ImageOptions)

    @property
    def name(self) -> str:
        """The folder's own name, the key sd-scripts uses in `ss_dataset_dirs` / `ss_tag_frequency`."""
        return Path(self.image_dir).name


@dataclass(frozen=True)
class DatasetSpec:
    """Subsets trained together with one batch size and one bucket geometry."""

    subsets: tuple[SubsetSpec, ...]
    geometry: BucketGeometry
    batch_size: int = 1
    prior_loss_weight: float = 1.0
    validation_split: float = 0.0  # fraction of each training folder held out (see data.holdout)
    validation_seed: int | None = None  # None: the training seed

    @property
    def resolution(self) -> Reso:
        return self.geometry.resolution


def parse_resolution(value: str | int | tuple | list, field_name: str = "resolution") -> Reso:
    """'512' → (512, 512); '512,768' → (512, 768) as (width, height), sd-scripts' convention."""
    if isinstance(value, int):
        parts = [value]
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        try:
            parts = [int(p.strip()) for p in str(value).split(",")]
        except ValueError:
            parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(isinstance(p, int) and 0 < p <= MAX_RESOLUTION for p in parts):
        raise ConfigError(
            f"{field_name}: {value!r} is not a resolution",
            [f"{field_name}: write one size ('512') or width,height ('512,768'), whole numbers from 1 to {MAX_RESOLUTION}"],
        )
    return int(parts[0]), int(parts[1])
