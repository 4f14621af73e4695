"""Drawing labelled grids: column headers on top, row labels at the left, a title above.

Sizes are computed by `grid_layout` before any image exists, so a grid that would be
too large is refused before sampling starts. Text uses Pillow's bundled font
(`ImageFont.load_default(size=...)`), sized from the cell and wrapped to fit it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from library.errors import SamplingError

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def font_size_for(cell_w: int, cell_h: int) -> int:
    """About 1/20 of the cell's mean side, kept between 10 and 48 px so labels stay readable."""
    return max(10, min(48, round((cell_w + cell_h) / 2 / 20)))


@lru_cache(maxsize=16)
def get_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def line_height(font) -> int:
    _left, top, _right, bottom = font.getbbox("Ay")
    return int(bottom - top) + max(2, int((bottom - top) * 0.3))


def wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` px; words longer than a line are split between characters."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        cur = ""
        for word in paragraph.split(" "):
            trial = f"{cur} {word}" if cur else word
            if font.getlength(trial) <= width:
                cur = trial
                continue
            if cur:
                lines.append(cur)
            cur = ""
            for ch in word:
                if cur and font.getlength(cur + ch) > width:
                    lines.append(cur)
                    cur = ""
                cur += ch
        lines.append(cur)
    return lines


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of one labelled grid."""

    cell_w: int
    cell_h: int
    cols: int
    rows: int
    margin: int
    font_size: int
    title_h: int
    header_h: int
    label_w: int
    col_lines: tuple[tuple[str, ...], ...]
    row_lines: tuple[tuple[str, ...], ...]
    title_lines: tuple[str, ...]

    @property
    def width(self) -> int:
        return self.label_w + self.cols * self.cell_w + (self.cols - 1) * self.margin

    @property
    def height(self) -> int:
        return self.title_h + self.header_h + self.rows * self.cell_h + (self.rows - 1) * self.margin

    def cell_origin(self, col: int, row: int) -> tuple[int, int]:
        return (self.label_w + col * (self.cell_w + self.margin),
                self.title_h + self.header_h + row * (self.cell_h + self.margin))


def grid_layout(cell_w: int, cell_h: int, col_labels: Sequence[str], row_labels: Sequence[str],
                title: str = "", margin: int = 0) -> GridLayout:
    """Geometry for cols x rows cells of cell_w x cell_h; empty label lists mean one unlabelled col/row."""
    size = font_size_for(cell_w, cell_h)
    font = get_font(size)
    pad = size // 2
    lh = line_height(font)
    cols, rows = max(1, len(col_labels)), max(1, len(row_labels))
    col_lines = tuple(tuple(wrap_text(t, font, cell_w - 2 * pad)) for t in col_labels)
    header_h = max((len(ls) for ls in col_lines), default=0) * lh + 2 * pad if col_labels else 0
    label_w = max(cell_w * 3 // 4, 6 * size) if row_labels else 0
    row_lines = tuple(tuple(wrap_text(t, font, label_w - 2 * pad)) for t in row_labels)
    grid_w = label_w + cols * cell_w + (cols - 1) * margin
    title_lines = tuple(wrap_text(title, font, grid_w - 2 * pad)) if title else ()
    title_h = len(title_lines) * lh + 2 * pad if title else 0
    return GridLayout(cell_w, cell_h, cols, rows, margin, size, title_h, header_h, label_w,
                      col_lines, row_lines, title_lines)


def check_size(width: int, height: int, max_megapixels: float) -> None:
    """Refuse a grid above the limit, naming its size (checked before any sampling)."""
    mp = width * height / 1e6
    if mp > max_megapixels:
        raise SamplingError(
            f"the grid would be {_thousands(width)} × {_thousands(height)} px ({_thousands(round(mp))} MP), "
            f"over the {max_megapixels:g} MP limit",
            ["use fewer axis values or a smaller --width/--height, or raise --grid_max_megapixels"],
        )


def _thousands(n: int) -> str:
    """40000 → "40 000" (the thin-space style the error messages use)."""
    return f"{n:,}".replace(",", " ")


def draw_grid(layout: GridLayout, cells: Sequence[Sequence[Image.Image | None]]) -> Image.Image:
    """cells[row][col] pasted into a white canvas with the layout's labels drawn centred."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = get_font(layout.font_size)
    lh = line_height(font)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is not None:
                _paste_fitted(canvas, img, layout.cell_origin(c, r), layout.cell_w, layout.cell_h)
    if layout.title_lines:
        _draw_lines(draw, font, layout.title_lines, 0, 0, layout.width, layout.title_h, lh)
    for c, lines in enumerate(layout.col_lines):
        x, _ = layout.cell_origin(c, 0)
        _draw_lines(draw, font, lines, x, layout.title_h, layout.cell_w, layout.header_h, lh)
    for r, lines in enumerate(layout.row_lines):
        _, y = layout.cell_origin(0, r)
        _draw_lines(draw, font, lines, 0, y, layout.label_w, layout.cell_h, lh)
    return canvas


def _paste_fitted(canvas: Image.Image, img: Image.Image, origin: tuple[int, int], w: int, h: int) -> None:
    """Paste centred in its cell; a larger image (Size axis) is scaled down keeping its aspect."""
    img = img.convert("RGB")
    if img.width > w or img.height > h:
        img = img.copy()
        img.thumbnail((w, h))
    canvas.paste(img, (origin[0] + (w - img.width) // 2, origin[1] + (h - img.height) // 2))


def _draw_lines(draw: ImageDraw.ImageDraw, font, lines: Sequence[str], x: int, y: int, w: int, h: int,
                lh: int) -> None:
    top = y + (h - len(lines) * lh) // 2
    for i, line in enumerate(lines):
        tw = font.getlength(line)
        draw.text((x + (w - tw) / 2, top + i * lh), line, fill=TEXT, font=font)


def combine_horizontally(grids: Sequence[Image.Image], gap: int) -> Image.Image:
    """Sub-grids (one per Z value) side by side with `gap` px between them."""
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    height = max(g.height for g in grids)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for g in grids:
        canvas.paste(g, (x, 0))
        x += g.width + gap
    return canvas


def combined_size(layouts: Sequence[GridLayout], gap: int) -> tuple[int, int]:
    return (sum(lay.width for lay in layouts) + gap * (len(layouts) - 1), max(lay.height for lay in layouts))


MARK_COLOUR = (220, 30, 30)


def annotate_cell(img: Image.Image, note: str | None, marked: bool = False) -> Image.Image:
    """A copy of a cell with `note` on a dark strip along its bottom, and a red frame when `marked`.

    Used to write each cell's epoch score (fidelity, drift) into a grid and to mark the
    recommended cell (library.evaluation.score_report.score_notes).
    """
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    if note:
        font = get_font(max(8, min(out.width // 14, 16)))
        lines = wrap_text(note, font, out.width - 4)
        lh = line_height(font)
        top = out.height - len(lines) * lh - 2
        draw.rectangle([0, top, out.width, out.height], fill=(0, 0, 0))
        for i, line in enumerate(lines):
            draw.text((2, top + 1 + i * lh), line, fill=(255, 255, 255), font=font)
    if marked:
        width = max(2, out.width // 40)
        draw.rectangle([0, 0, out.width - 1, out.height - 1], outline=MARK_COLOUR, width=width)
    return out
