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
from library.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
    if len(parts) != 2 or not all(isinstance(p, int) and p > 0 for p in parts):
        raise ConfigError(
            f"{field_name}: {value!r} is not a resolution",
            [f"{field_name}: write one size ('512') or width,height ('512,768'), positive integers"],
        )
    return int(parts[0]), int(parts[1])
