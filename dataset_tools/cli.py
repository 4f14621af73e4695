"""`lorasmith dataset …`: crop, resize, caption, prepare, report, check and mask, each INPUT then OUTPUT.

Options the trainer also has are generated from library.config, so they mean the same here.
"""
from __future__ import annotations

import argparse
import json

from dataset_tools.images import OUTPUT_FORMATS, ToolRun
from library.config_io import add_config_arguments
from library.config_resolve import resolve_config

DESCRIPTION = """Crop, resize, caption, prepare and report a dataset; each tool reads INPUT and writes OUTPUT.

Every tool prints what it wrote, what it skipped because it was already done
(re-running is safe; --overwrite redoes it) and every file it could not use,
by path. The exit code is 1 when some image could not be read, 0 otherwise.
Options the trainer also has (--caption_extension, --resolution, --enable_bucket …)
mean the same here as in `lorasmith train`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="prepare a dataset: crop, resize, caption, folders, report, check, masks",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset_tool", metavar="TOOL", required=True)
    _add_crop(sub)
    _add_resize(sub)
    _add_caption(sub)
    _add_prepare(sub)
    _add_report(sub)
    _add_check(sub)
    _add_mask(sub)


def _io(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="INPUT", help="folder of source images (never modified)")
    p.add_argument("dst", metavar="OUTPUT", help="folder to write to (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def _format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", dest="fmt", choices=sorted(OUTPUT_FORMATS), default=None,
                   help="output format (default: each file keeps its own)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--upscale", action="store_true", help="allow enlarging images smaller than the target")


def _finish(run: ToolRun) -> int:
    print("\n".join(run.summary_lines()))
    return 1 if run.unreadable else 0


def _add_crop(sub) -> None:
    from dataset_tools.crop import FOCUS_SIDECAR_SUFFIX

    p = sub.add_parser("crop", help="crop to 1:1 or any ratio around the centre, a focus point or a face",
                       epilog=f"Focus sidecar: a file <stem>{FOCUS_SIDECAR_SUFFIX} beside an image holding one line "
                              "'x,y' (fractions of the upright image's width and height from the top-left, "
                              "e.g. 0.5,0.3) overrides --face and --focus for that image.")
    _io(p)
    p.add_argument("--ratio", default="1:1", help="aspect ratio W:H (default 1:1)")
    p.add_argument("--focus", default="0.5,0.5", help="crop centre as x,y fractions (default 0.5,0.5)")
    p.add_argument("--face", action="store_true", help="centre on the largest face (OpenCV Haar cascade)")
    p.add_argument("--size", type=int, default=None, help="resize so the short side is SIZE (Lanczos)")
    _format_args(p)
    p.set_defaults(func=_crop)


def _crop(args: argparse.Namespace) -> int:
    from dataset_tools.crop import CropOptions, crop_folder, parse_focus, parse_ratio
    from dataset_tools.images import check_format

    options = CropOptions(ratio=parse_ratio(args.ratio), focus=parse_focus(args.focus), face=args.face,
                          size=args.size, upscale=args.upscale, quality=args.quality, overwrite=args.overwrite,
                          fmt=check_format(args.fmt) if args.fmt else None)
    return _finish(crop_folder(args.src, args.dst, options, progress=not args.no_progress))


def _add_resize(sub) -> None:
    p = sub.add_parser("resize", help="resize to a max side or an exact size, and/or convert the format")
    _io(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--max_side", type=int, default=None, help="scale down so the longer side is at most N")
    group.add_argument("--size", default=None, help="exact WxH (or N): scale to cover, centre-crop the rest")
    _format_args(p)
    p.set_defaults(func=_resize)


def _resize(args: argparse.Namespace) -> int:
    from dataset_tools.resize import ResizeOptions, parse_size, resize_folder

    options = ResizeOptions(max_side=args.max_side, exact=parse_size(args.size) if args.size else None,
                            fmt=args.fmt, quality=args.quality, upscale=args.upscale, overwrite=args.overwrite)
    return _finish(resize_folder(args.src, args.dst, options, progress=not args.no_progress))


def _caption_io(p: argparse.ArgumentParser) -> None:
    _io(p)
    add_config_arguments(p, ["caption_extension"])
    p.add_argument("--in_place", action="store_true", help="edit the captions of INPUT itself (give it twice)")
    p.add_argument("--captions_only", action="store_true", help="write caption files only, do not copy images")


def _caption_ext(args: argparse.Namespace) -> str:
    from dataset_tools.captions import DEFAULT_CAPTION_EXTENSION

    return getattr(args, "caption_extension", DEFAULT_CAPTION_EXTENSION)


def _add_caption(sub) -> None:
    p = sub.add_parser("caption", help="create, edit, count or generate (BLIP) caption files")
    csub = p.add_subparsers(dest="caption_action", metavar="ACTION", required=True)
    create = csub.add_parser("create", help="caption from a fixed text or the file name")
    _caption_io(create)
    src = create.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", default=None, help="the caption for every image, e.g. 'a photo of ohwx woman'")
    src.add_argument("--from_filename", action="store_true", help="words of the file name, numbering dropped")
    create.set_defaults(func=_caption_create)

    edit = csub.add_parser("edit", help="prefix/suffix, add/remove/replace tags, dedupe")
    _caption_io(edit)
    edit.add_argument("--prefix", default="", help="put first unless already there, e.g. 'ohwx woman'")
    edit.add_argument("--suffix", default="", help="put last unless already there")
    edit.add_argument("--add", nargs="*", default=[], help="tags to add (at the end)")
    edit.add_argument("--add_at_start", action="store_true", help="add the new tags at the start")
    edit.add_argument("--remove", nargs="*", default=[], help="tags to remove (case-insensitive)")
    edit.add_argument("--replace", nargs="*", default=[], metavar="OLD=NEW", help="tags to replace")
    edit.add_argument("--dedupe", action="store_true", help="drop repeated tags")
    edit.add_argument("--search_replace", nargs="*", default=[], metavar="OLD=NEW",
                      help="replace text anywhere in the caption (spaces kept), applied first")
    edit.add_argument("--regex", action="store_true", help="--search_replace OLD is a regular expression")
    edit.add_argument("--dry_run", action="store_true",
                      help="write nothing: show each caption that would change and the tag counts before/after")
    edit.set_defaults(func=_caption_edit)

    freq = csub.add_parser("freq", help="how many captions contain each tag")
    freq.add_argument("src", metavar="INPUT")
    add_config_arguments(freq, ["caption_extension"])
    freq.add_argument("--json", action="store_true", help="print JSON")
    freq.add_argument("--compare", default=None, metavar="OTHER",
                      help="show each tag's count in INPUT (before) and OTHER (after), e.g. an edited copy")
    freq.set_defaults(func=_caption_freq)

    blip = csub.add_parser("blip", help="caption with a local BLIP model folder (offline)")
    _caption_io(blip)
    blip.add_argument("--prefix", default="", help="trigger words put first, e.g. 'ohwx woman'")
    _generation_args(blip, max_new_tokens=40, min_new_tokens=5)
    blip.set_defaults(func=_caption_blip)
    _add_caption_tag(csub)
    _add_caption_vlm(csub)


def _generation_args(p: argparse.ArgumentParser, max_new_tokens: int, min_new_tokens: int) -> None:
    """The model folder and generation settings shared by the transformers captioners."""
    p.add_argument("--model", required=True, help="folder saved with save_pretrained (model + processor)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    p.add_argument("--min_new_tokens", type=int, default=min_new_tokens)
    p.add_argument("--num_beams", type=int, default=3)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def _caption_create(args: argparse.Namespace) -> int:
    from dataset_tools.captions import create_captions

    return _finish(create_captions(args.src, args.dst, text=args.text, from_filename=args.from_filename,
                                   caption_extension=_caption_ext(args), in_place=args.in_place,
                                   overwrite=args.overwrite, captions_only=args.captions_only,
                                   progress=not args.no_progress))


def _caption_edit(args: argparse.Namespace) -> int:
    from dataset_tools.captions import CaptionEdit, edit_captions, parse_replacements

    edit = CaptionEdit(prefix=args.prefix, suffix=args.suffix, add=args.add, add_at_start=args.add_at_start,
                       remove=args.remove, replace=parse_replacements(args.replace), dedupe=args.dedupe,
                       substitute=parse_replacements(args.search_replace, strip=False), regex=args.regex)
    if args.dry_run:
        return _caption_preview(args, edit)
    return _finish(edit_captions(args.src, args.dst, edit, caption_extension=_caption_ext(args),
                                 in_place=args.in_place, overwrite=args.overwrite, captions_only=args.captions_only,
                                 progress=not args.no_progress))


def _caption_preview(args: argparse.Namespace, edit) -> int:
    from dataset_tools.captions import compare_frequencies, preview_edit

    preview = preview_edit(args.src, edit, caption_extension=_caption_ext(args))
    for name, before, after in preview.changes:
        print(f"{name}: {before if before is not None else '(no caption)'!r} -> {after!r}")
    print(f"dry run: {len(preview.changes)} of {preview.before.images} captions would change; nothing written")
    _print_comparison(compare_frequencies(preview.before, preview.after))
    return 0


def _print_comparison(rows: list[tuple[str, int, int]]) -> None:
    print(f"{'before':>6} {'after':>6} {'change':>6}  tag")
    for tag, before, after in rows:
        print(f"{before:>6} {after:>6} {after - before:>+6}  {tag}")


def _caption_freq(args: argparse.Namespace) -> int:
    from dataset_tools.captions import compare_frequencies, tag_frequency

    freq = tag_frequency(args.src, caption_extension=_caption_ext(args))
    if args.compare:
        other = tag_frequency(args.compare, caption_extension=_caption_ext(args))
        rows = compare_frequencies(freq, other)
        if args.json:
            print(json.dumps({"before": freq.to_dict(), "after": other.to_dict(),
                              "tags": [{"tag": t, "before": b, "after": a} for t, b, a in rows]}, indent=2))
            return 0
        print(f"before: {freq.captioned} of {freq.images} captioned; after: {other.captioned} of {other.images}")
        _print_comparison(rows)
        return 0
    if args.json:
        print(json.dumps(freq.to_dict(), indent=2))
        return 0
    print(f"{freq.captioned} of {freq.images} images have a caption")
    for tag, count in freq.counts:
        print(f"{count:>6}  {tag}")
    for name in freq.missing:
        print(f"no caption: {name}")
    return 0


def _caption_blip(args: argparse.Namespace) -> int:
    from dataset_tools.blip import blip_caption_folder

    return _finish(blip_caption_folder(
        args.src, args.dst, args.model, prefix=args.prefix, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, min_new_tokens=args.min_new_tokens,
        caption_extension=_caption_ext(args), in_place=args.in_place, overwrite=args.overwrite,
        captions_only=args.captions_only, device=args.device, progress=not args.no_progress))


def _add_caption_tag(csub) -> None:
    tag = csub.add_parser("tag", help="tag with a local WD14 ONNX tagger folder (model.onnx + selected_tags.csv)",
                          epilog="Option names follow sd-scripts' finetune/tag_images_by_wd14_tagger.py. "
                                 "Needs onnxruntime: pip install 'lorasmith[caption]'.")
    _caption_io(tag)
    tag.add_argument("--model", required=True, help="folder holding model.onnx and selected_tags.csv")
    tag.add_argument("--thresh", "--threshold", dest="thresh", type=float, default=0.35,
                     help="confidence needed to add a tag (default 0.35)")
    tag.add_argument("--general_threshold", type=float, default=None, help="for general tags (default --thresh)")
    tag.add_argument("--character_threshold", type=float, default=None,
                     help="for character tags (default --thresh)")
    tag.add_argument("--undesired_tags", default="", help="comma-separated tags never written")
    tag.add_argument("--tag_replacement", default="", help="source,target;source2,target2 (escape , ; with \\)")
    tag.add_argument("--remove_underscore", action="store_true", help="long_hair -> long hair")
    tag.add_argument("--character_tags_first", action="store_true", help="character tags before general ones")
    tag.add_argument("--always_first_tags", default="", help="comma-separated tags moved first when found")
    tag.add_argument("--use_rating_tags", action="store_true", help="put the most likely rating tag first")
    tag.add_argument("--caption_separator", default=", ", help="between tags (default ', ')")
    tag.add_argument("--trigger", "--prefix", dest="trigger", default="",
                     help="trigger words put before every caption, e.g. 'ohwx woman'")
    tag.add_argument("--append_tags", action="store_true",
                     help="keep each image's own caption and add the tags it lacks after it")
    tag.add_argument("--batch_size", type=int, default=4)
    tag.set_defaults(func=_caption_tag)


def _caption_tag(args: argparse.Namespace) -> int:
    from dataset_tools.captions import split_tags
    from dataset_tools.tagger import TagOptions, parse_tag_replacement, tag_folder

    options = TagOptions(
        general_threshold=args.thresh if args.general_threshold is None else args.general_threshold,
        character_threshold=args.thresh if args.character_threshold is None else args.character_threshold,
        undesired=split_tags(args.undesired_tags), replacements=parse_tag_replacement(args.tag_replacement),
        remove_underscore=args.remove_underscore, character_tags_first=args.character_tags_first,
        always_first=split_tags(args.always_first_tags), use_rating_tags=args.use_rating_tags,
        separator=args.caption_separator)
    return _finish(tag_folder(args.src, args.dst, args.model, options, prefix=args.trigger,
                              batch_size=args.batch_size, caption_extension=_caption_ext(args),
                              in_place=args.in_place, overwrite=args.overwrite, captions_only=args.captions_only,
                              append=args.append_tags, progress=not args.no_progress))


def _add_caption_vlm(csub) -> None:
    from dataset_tools.vlm import PROMPT_STYLES

    vlm = csub.add_parser("vlm", help="caption with a local vision-language model (BLIP, BLIP-2, GIT, Florence-2 …)",
                          epilog="Any model transformers loads with AutoModelForImageTextToText without remote "
                                 "code. --prompt_style caption: the prompt starts the caption ('a photo of'); "
                                 "task: a task token (Florence-2 '<MORE_DETAILED_CAPTION>'); chat: a question "
                                 "through the processor's chat template.")
    _caption_io(vlm)
    vlm.add_argument("--prompt", default=None, help="prompt text (default depends on --prompt_style)")
    vlm.add_argument("--prompt_style", choices=PROMPT_STYLES, default="caption")
    vlm.add_argument("--trigger", "--prefix", dest="trigger", default="",
                     help="trigger words put before every caption, e.g. 'ohwx woman'")
    _generation_args(vlm, max_new_tokens=60, min_new_tokens=1)
    vlm.set_defaults(func=_caption_vlm)


def _caption_vlm(args: argparse.Namespace) -> int:
    from dataset_tools.vlm import vlm_caption_folder

    return _finish(vlm_caption_folder(
        args.src, args.dst, args.model, prompt=args.prompt, style=args.prompt_style, prefix=args.trigger,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        min_new_tokens=args.min_new_tokens, caption_extension=_caption_ext(args), in_place=args.in_place,
        overwrite=args.overwrite, captions_only=args.captions_only, device=args.device,
        progress=not args.no_progress))


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="lay out img/<repeats>_<instance> <class>, reg/, log/, model/ (copies)")
    p.add_argument("src", metavar="TRAIN_IMAGES", help="folder of training images (+ captions)")
    p.add_argument("dst", metavar="DEST", help="project folder to create")
    p.add_argument("--instance_prompt", required=True, help="trigger words, e.g. 'ohwx'")
    p.add_argument("--class_prompt", required=True, help="the class, e.g. 'woman'")
    p.add_argument("--repeats", type=int, default=40, help="training repeats (default 40)")
    p.add_argument("--reg_images", default=None, help="folder of regularization images")
    p.add_argument("--reg_repeats", type=int, default=1, help="regularization repeats (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace files that differ at the destination")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from dataset_tools.prepare import prepare_training_folders

    result = prepare_training_folders(args.instance_prompt, args.class_prompt, args.src, args.dst,
                                      train_repeats=args.repeats, reg_images=args.reg_images,
                                      reg_repeats=args.reg_repeats, overwrite=args.overwrite,
                                      progress=not args.no_progress)
    code = 0
    for name, run in result.runs.items():
        print(f"[{name}] " + "\n".join(run.summary_lines()))
        code = max(code, 1 if run.unreadable else 0)
    print(f"train with: {result.train_flags()}")
    return code


def _dataset_parser(sub, name: str, json_help: str, **kwargs) -> argparse.ArgumentParser:
    """A tool reading a training folder with the trainer's dataset options (report, check)."""
    from dataset_tools.report import REPORT_OPTIONS

    p = sub.add_parser(name, **kwargs)
    p.add_argument("train_data_dir", metavar="DIR", help="folder of '<repeats>_<class tokens>' subfolders")
    p.add_argument("--json", action="store_true", help=json_help)
    add_config_arguments(p, REPORT_OPTIONS)
    return p


def _add_report(sub) -> None:
    p = _dataset_parser(sub, "report", "print the report as JSON",
                        help="counts, sizes, captions, buckets, steps, and warnings on dataset size, image size and captions")
    p.add_argument("--no_images", action="store_true", help="leave out the per-image bucket list")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from dataset_tools.report import build_report, format_report

    report = build_report(args.train_data_dir, resolve_config(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, show_images=not args.no_images))
    return 0


def _add_check(sub) -> None:
    p = _dataset_parser(
        sub, "check", "print images, findings and report as JSON",
        help="the report plus per-image checks: faces, blur, size, aspect, near-duplicates, diversity",
        description="Checks a training folder the way a person-LoRA guide asks: one sharp photo of one person "
                    "each, at or above the training resolution, varied, 10-50 of them, and the repeats/batch/steps "
                    "arithmetic. Exit code: 0 when nothing was found, 1 when there are findings (each names the "
                    "file and what to do).")
    p.add_argument("--no_faces", action="store_true", help="skip face counting (style or object datasets)")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from dataset_tools.check import check_dataset, format_check

    check = check_dataset(args.train_data_dir, resolve_config(args), faces=not args.no_faces)
    print(json.dumps(check.to_dict(), indent=2) if args.json else format_check(check))
    return 1 if check.findings else 0


def _add_mask(sub) -> None:
    p = sub.add_parser("mask", help="loss masks for --masked_loss from detected faces (learn the face, not the rest)")
    _io(p)
    p.add_argument("--face", action="store_true", required=True, help="white inside each detected face, black elsewhere")
    p.add_argument("--margin", type=float, default=0.2, help="grow each face box by this fraction of its size per side (default 0.2)")
    p.set_defaults(func=_mask)


def _mask(args: argparse.Namespace) -> int:
    from dataset_tools.face_masks import face_masks

    return _finish(face_masks(args.src, args.dst, margin=args.margin, overwrite=args.overwrite, progress=not args.no_progress))
