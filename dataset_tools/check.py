"""`lorasmith dataset check`: the dataset report plus what a person-LoRA guide warns about, per image.

Built on `dataset_tools.report` (same scan, buckets and plan as the trainer) and
`library.data.quality` (sharpness, perceptual hash, aspect): for every training
image the number of faces (OpenCV's frontal-face Haar cascade — one person per
photo, or the LoRA learns whoever else is in it), blur, size below the training
resolution, aspect beyond the buckets and near-duplicates; for the set its
diversity, the report's count advice and the plan's training arithmetic. Every
finding names the file (or the set) and what to do. Regularization images are
class photos of other people and are not checked per image.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dataset_tools.crop import FaceDetector, HaarFaceDetector
from dataset_tools.images import load_image
from dataset_tools.report import DatasetReport, build_report, format_report
from library.config import TrainConfig
from library.data.advice import instance_token_advice
from library.data.buckets import make_bucket_resolutions
from library.data.quality import Finding, ImageQuality, bucket_aspect_limit, image_findings, measure, set_findings
from library.errors import DatasetError

# Without buckets every image is centre-cropped to the training shape; beyond 1.5:1 a third is lost.
NO_BUCKET_ASPECT_LIMIT = 1.5


@dataclass
class DatasetCheck:
    report: DatasetReport
    images: list[ImageQuality]
    findings: list[Finding]

    def to_dict(self) -> dict:
        return {"images": [asdict(r) for r in self.images], "findings": [asdict(f) for f in self.findings],
                "report": self.report.to_dict()}


def aspect_limit(cfg: TrainConfig, resolution: tuple[int, int]) -> float:
    """The most elongated shape the buckets hold without cutting much away."""
    if not cfg.enable_bucket:
        return NO_BUCKET_ASPECT_LIMIT
    return bucket_aspect_limit(make_bucket_resolutions(resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps))


def face_findings(rows: list[ImageQuality]) -> list[Finding]:
    """0 or several faces: the guide's "one person per photo"."""
    out = []
    for r in rows:
        if r.faces == 0:
            out.append(Finding("no_face", r.file, "no frontal face found",
                               "for a person LoRA use photos where the face is clearly visible, or remove this one"))
        elif r.faces is not None and r.faces > 1:
            out.append(Finding("faces", r.file, f"{r.faces} faces found: the LoRA learns everyone in the photo",
                               "crop to the one person (lorasmith dataset crop --face) or remove it"))
    return out


def measure_images(report: DatasetReport, detector: FaceDetector | None, skipped: list[str]) -> list[ImageQuality]:
    """Measures of every training image (reg images left out), faces when a detector is given."""
    paths = {f.folder: Path(f.path) for f in report.folders if not f.is_reg}
    rows = []
    for r in report.images:
        if r.folder not in paths:
            continue
        try:
            img = load_image(paths[r.folder] / r.file)
        except DatasetError as exc:
            skipped.append(exc.summary)
            continue
        q = measure(f"{r.folder}/{r.file}", np.asarray(img))
        if detector is not None:
            q.faces = len(detector(img))
        rows.append(q)
    return rows


def check_dataset(train_data_dir: str | os.PathLike[str], cfg: TrainConfig, *, faces: bool = True,
                  detector: FaceDetector | None = None) -> DatasetCheck:
    """Report, per-image measures and every finding, in the order images, set, arithmetic."""
    report = build_report(train_data_dir, cfg)
    if faces and detector is None:
        detector = HaarFaceDetector()
    skipped: list[str] = []
    rows = measure_images(report, detector if faces else None, skipped)
    res = (report.resolution[0], report.resolution[1])
    findings = image_findings(rows, min(res), aspect_limit(cfg, res)) + face_findings(rows) + set_findings(rows)
    findings += [Finding("unreadable", s, "cannot be read", "re-export or remove it") for s in skipped + report.plan.skipped]
    findings += [Finding("guide", None, w, "adjust the dataset as the message says (folder table above)") for w in report.guide_warnings]
    findings += [Finding("plan", None, w, "adjust repeats, batch size or epochs as the message says (training plan above)")
                 for w in report.plan.warnings]
    class_tokens = [f.folder.partition("_")[2] for f in report.folders if not f.is_reg]
    findings += [Finding("token", None, problem, fix) for problem, fix in instance_token_advice(class_tokens)]
    return DatasetCheck(report, rows, findings)


def format_check(check: DatasetCheck) -> str:
    """The report's tables and plan, a per-image quality table, then one line per finding."""
    lines = [format_report(check.report, show_images=False), "", "Image checks"]
    lines.append(f"  {'file':<40} {'size':>11} {'sharp':>8} {'aspect':>6} {'faces':>5}")
    for r in check.images:
        faces = "-" if r.faces is None else str(r.faces)
        lines.append(f"  {r.file[:40]:<40} {f'{r.width}x{r.height}':>11} {r.sharpness:>8.0f} {r.aspect:>6.2f} {faces:>5}")
    lines.append("")
    lines += [f"finding: {f.line()}" for f in check.findings] or ["no findings"]
    return "\n".join(lines)
