"""Caption files: create, add a trigger prefix/suffix, edit tags, deduplicate, count.

A caption is the text file beside an image with the same stem (``photo.jpg`` →
``photo.caption``, or ``photo.txt`` with ``caption_extension=".txt"``), read by
the trainer as the prompt for that image. Tag-style
captions are comma-separated (``ohwx woman, smiling, outdoors``).

Every folder operation reads ``SRC`` and writes ``DST``: the caption files, and
(unless ``captions_only``) a copy of each image, so ``DST`` is a complete
dataset. Editing the captions of ``SRC`` itself needs ``in_place=True``; images
are never touched then. The edits are idempotent: a prefix already present is
not added twice and added tags are not duplicated, so re-running is safe.
"""
from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dataset_tools.images import ToolRun, refuse_overlap, scan_folder, start_run
from library.config import default_config
from library.errors import DatasetError
from library.fileio import atomic_path, atomic_write_text

# What the trainer reads by default, so captions written here are picked up without flags.
DEFAULT_CAPTION_EXTENSION = default_config().caption_extension


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Caption -> stripped, non-empty tags."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def join_tags(tags: list[str], separator: str = ",") -> str:
    return f"{separator} ".join(tags)


def dedupe_tags(tags: list[str]) -> list[str]:
    """Drop repeated tags (case-insensitive), keeping the first occurrence and the order."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = tag.lower()
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def caption_from_filename(stem: str) -> str:
    """'woman_in_red-dress (2)' -> 'woman in red dress': separators to spaces, numbering dropped."""
    text = re.sub(r"\(\d+\)|\bcopy\b", " ", stem, flags=re.IGNORECASE)
    text = re.sub(r"[_\-.]+", " ", text)
    text = re.sub(r"(\s\d+)+\s*$", " ", f" {text} ")
    return " ".join(text.split())


@dataclass
class CaptionEdit:
    """One set of caption edits, applied in this order: substitute, replace, remove, add, dedupe, prefix, suffix.

    `substitute` is search/replace on the caption text (a regular expression with
    `regex`), for prose captions and parts of tags; `replace` swaps whole tags.
    """

    prefix: str = ""
    suffix: str = ""
    add: list[str] = field(default_factory=list)
    add_at_start: bool = False
    remove: list[str] = field(default_factory=list)
    replace: dict[str, str] = field(default_factory=dict)
    dedupe: bool = False
    separator: str = ","
    substitute: dict[str, str] = field(default_factory=dict)
    regex: bool = False

    def __post_init__(self) -> None:
        if self.regex:
            check_patterns(self.substitute)

    def apply(self, caption: str) -> str:
        for old, new in self.substitute.items():
            caption = re.sub(old, new, caption) if self.regex else caption.replace(old, new)
        tags = split_tags(caption, self.separator)
        tags = [self.replace.get(t, t) for t in tags]
        removed = {r.lower() for r in self.remove}
        tags = [t for t in tags if t.lower() not in removed]
        present = {t.lower() for t in tags}
        new = [t for t in self.add if t.lower() not in present]
        tags = new + tags if self.add_at_start else tags + new
        if self.dedupe:
            tags = dedupe_tags(tags)
        tags = _with_prefix(tags, split_tags(self.prefix, self.separator))
        tags = _with_suffix(tags, split_tags(self.suffix, self.separator))
        return join_tags(tags, self.separator)


def _with_prefix(tags: list[str], prefix: list[str]) -> list[str]:
    if not prefix or tags[: len(prefix)] == prefix:
        return tags
    return prefix + tags


def _with_suffix(tags: list[str], suffix: list[str]) -> list[str]:
    if not suffix or (len(tags) >= len(suffix) and tags[-len(suffix):] == suffix):
        return tags
    return tags + suffix


def parse_replacements(pairs: list[str], strip: bool = True) -> dict[str, str]:
    """['old=new', ...] -> {'old': 'new'}; `strip=False` keeps spaces (text search/replace)."""
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if strip:
            old, new = old.strip(), new.strip()
        if not sep or not old.strip():
            raise DatasetError(f"bad replacement {pair!r}", ["write it as old=new"])
        out[old] = new
    return out


def check_patterns(patterns: dict[str, str]) -> None:
    """Refuse a bad regular expression before any file is touched."""
    for pattern, repl in patterns.items():
        try:
            re.compile(pattern).sub(repl, "")
        except re.error as exc:
            raise DatasetError(f"bad regular expression {pattern!r} -> {repl!r}: {exc}",
                               ["fix the pattern, or drop --regex to search for the text as written"]) from exc


def caption_path(image: Path, folder: Path, caption_extension: str) -> Path:
    return folder / (image.stem + caption_extension)


def read_caption(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip()


def prepare_caption_output(src: Path, dst: Path, in_place: bool) -> None:
    """Refuse writing into SRC unless in-place editing was asked for, and in-place into another folder."""
    if in_place:
        if src.resolve() != dst.resolve():
            raise DatasetError("in-place editing needs the same folder as input and output", [f"{src} vs {dst}"])
        return
    refuse_overlap([src], dst, nested_ok=True)


def copy_image(image: Path, dst: Path, overwrite: bool) -> None:
    """Copy an image byte for byte (atomically) beside its new caption."""
    dest = dst / image.name
    if dest.exists() and not overwrite:
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(image, tmp)


def _write_captions(src: Path, dst: Path, make, caption_extension: str, in_place: bool,
                    overwrite: bool, captions_only: bool, desc: str, progress: bool) -> ToolRun:
    """Shared loop: `make(image, current_caption_or_None) -> (text_or_None, note_or_None)`."""
    prepare_caption_output(src, dst, in_place)
    scan = scan_folder(src)
    run = start_run(scan, list_non_images=False)
    run.non_images = [p for p in scan.non_images if p.suffix != caption_extension]
    for image in tqdm(scan.images, desc=desc, unit="img", disable=not progress):
        dest = caption_path(image, dst, caption_extension)
        if dest.exists() and not overwrite and not in_place:
            run.skipped_existing.append(dest)
            continue
        current = read_caption(caption_path(image, src, caption_extension))
        text, note = make(image, current)
        if note:
            run.notes.append(note)
        if text is None or (in_place and text == current):
            continue
        atomic_write_text(dest, text + "\n")
        run.written.append(dest)
        if not in_place and not captions_only:
            copy_image(image, dst, overwrite)
    return run


def create_captions(src: str | os.PathLike[str], dst: str | os.PathLike[str], text: str | None = None,
                    from_filename: bool = False, caption_extension: str = DEFAULT_CAPTION_EXTENSION,
                    in_place: bool = False, overwrite: bool = False, captions_only: bool = False,
                    progress: bool = True) -> ToolRun:
    """Write a caption for every image: a fixed text, or words taken from the file name.

    Images that already have a caption in SRC keep it (copied as is) unless `overwrite`.
    """
    if (text is None) == (not from_filename):
        raise DatasetError("give exactly one caption source", ["--text 'a photo of ohwx woman' or --from_filename"])

    def make(image: Path, current: str | None) -> tuple[str | None, str | None]:
        if current is not None and not overwrite:
            return current, None
        return (text if text is not None else caption_from_filename(image.stem)), None

    return _write_captions(Path(src), Path(dst), make, caption_extension, in_place, overwrite, captions_only,
                           "captions", progress)


def edit_captions(src: str | os.PathLike[str], dst: str | os.PathLike[str], edit: CaptionEdit,
                  caption_extension: str = DEFAULT_CAPTION_EXTENSION, in_place: bool = False,
                  overwrite: bool = False, captions_only: bool = False, progress: bool = True) -> ToolRun:
    """Apply `edit` to every image's caption; a missing caption starts empty (and is noted)."""

    def make(image: Path, current: str | None) -> tuple[str | None, str | None]:
        note = f"{image.name}: had no caption, created one" if current is None else None
        return edit.apply(current or ""), note

    return _write_captions(Path(src), Path(dst), make, caption_extension, in_place, overwrite, captions_only,
                           "captions", progress)


@dataclass
class TagFrequency:
    counts: list[tuple[str, int]]
    images: int
    captioned: int
    missing: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"images": self.images, "captioned": self.captioned, "missing": self.missing,
                "tags": [{"tag": t, "count": c} for t, c in self.counts]}


def count_tags(captions: dict[str, str | None], separator: str = ",") -> TagFrequency:
    """{image name: caption or None} -> how many captions hold each tag, most frequent first, ties by name."""
    counter: Counter[str] = Counter()
    missing = []
    for name, caption in captions.items():
        if caption is None:
            missing.append(name)
            continue
        counter.update(set(dedupe_tags(split_tags(caption, separator))))
    counts = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return TagFrequency(counts, len(captions), len(captions) - len(missing), missing)


def read_captions(src: str | os.PathLike[str], caption_extension: str = DEFAULT_CAPTION_EXTENSION
                  ) -> dict[str, str | None]:
    """{image name: its caption, or None when it has none} for every image in SRC."""
    src = Path(src)
    return {image.name: read_caption(caption_path(image, src, caption_extension))
            for image in scan_folder(src).images}


def tag_frequency(src: str | os.PathLike[str], caption_extension: str = DEFAULT_CAPTION_EXTENSION,
                  separator: str = ",") -> TagFrequency:
    """How many captions contain each tag (once per caption), most frequent first, ties by name."""
    return count_tags(read_captions(src, caption_extension), separator)


def compare_frequencies(before: TagFrequency, after: TagFrequency) -> list[tuple[str, int, int]]:
    """(tag, count before, count after) for every tag in either, biggest change first, then by name."""
    old, new = dict(before.counts), dict(after.counts)
    rows = [(tag, old.get(tag, 0), new.get(tag, 0)) for tag in set(old) | set(new)]
    return sorted(rows, key=lambda r: (-abs(r[2] - r[1]), -max(r[1], r[2]), r[0]))


@dataclass
class EditPreview:
    """What an edit would change, written nowhere: per-caption changes and tag counts before/after."""

    changes: list[tuple[str, str | None, str]]
    before: TagFrequency
    after: TagFrequency


def preview_edit(src: str | os.PathLike[str], edit: CaptionEdit,
                 caption_extension: str = DEFAULT_CAPTION_EXTENSION) -> EditPreview:
    """The result of `edit_captions` on SRC without writing anything (--dry_run)."""
    current = read_captions(src, caption_extension)
    edited = {name: edit.apply(text or "") for name, text in current.items()}
    changes = [(name, current[name], edited[name]) for name in current if edited[name] != current[name]]
    return EditPreview(changes, count_tags(current, edit.separator), count_tags(edited, edit.separator))
