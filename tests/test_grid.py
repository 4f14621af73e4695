"""X/Y/Z grids: axes, cell order and batching, layout sizes, size limit, outputs on the tiny model."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
from PIL import Image

from library.errors import SamplingError
from library.evaluation.axes import (
    CellSettings,
    expand_lora_files,
    lora_label,
    lora_sort_key,
)
from library.evaluation.cli import axis_specs
from library.evaluation.grid import (
    batches,
    execution_order,
    parse_axes,
    plan_cells,
    run_grid,
)
from library.evaluation.render import draw_grid, get_font, grid_layout, line_height
from library.sampling.pipeline import SampleRequest, generate

BASE = CellSettings(SampleRequest(prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64,
                                  seed=5), "tiny")



@pytest.fixture(scope="module")
def bundle():
    from library.models import build_tiny_bundle

    return build_tiny_bundle(0)


def test_lora_files_sorted_by_epoch_final_last(tmp_path):
    for name in ["me.safetensors", "me-000010.safetensors", "me-000002.safetensors", "me-000001.safetensors"]:
        (tmp_path / name).write_bytes(b"")
    files = expand_lora_files(str(tmp_path / "me*.safetensors"))
    assert [p.rsplit("/", 1)[1] for p in files] == [
        "me-000001.safetensors", "me-000002.safetensors", "me-000010.safetensors", "me.safetensors"]
    assert [lora_label(p) for p in files] == ["epoch 1", "epoch 2", "epoch 10", "me (final)"]
    assert lora_sort_key("x-step00000100.safetensors") < lora_sort_key("x.safetensors")
    with pytest.raises(SamplingError, match="matches no"):
        expand_lora_files(str(tmp_path / "nothing-*.safetensors"))


def test_prompt_sr_replaces_every_occurrence_and_requires_the_term():
    base = CellSettings(SampleRequest(prompt="red cube, red sky", negative_prompt="red blur", seed=1), "tiny")
    axes = parse_axes(base, [("Prompt S/R", "red, green"), (None, None), (None, None)], None)
    cells = plan_cells(base, axes)
    assert [c.settings.request.prompt for c in cells] == ["red cube, red sky", "green cube, green sky"]
    assert cells[1].settings.request.negative_prompt == "green blur"
    with pytest.raises(SamplingError) as exc:
        parse_axes(base, [("Prompt S/R", "blue, green"), (None, None), (None, None)], None)
    assert "'blue'" in str(exc.value)
    with pytest.raises(SamplingError, match="Negative S/R"):
        parse_axes(base, [("Negative S/R", "cube, x"), (None, None), (None, None)], None)


def test_axis_errors_are_collected():
    with pytest.raises(SamplingError) as exc:
        parse_axes(BASE, [("Steps", "1, x"), ("Colour", "1"), ("LoRA weight", "0.5")], None)
    text = str(exc.value)
    assert "'x'" in text and "Colour" in text and "needs a LoRA" in text


def test_values_apply_to_settings():
    axes = parse_axes(BASE, [("CFG Scale", "3-7 (+2)"), ("Size", "64x64, 64x96"), ("Sampler", "k_dpm_2, DDIM")], None)
    cells = plan_cells(BASE, axes)
    assert len(cells) == 3 * 2 * 2
    last = cells[-1].settings.request
    assert (last.cfg_scale, last.width, last.height, last.sampler) == (7.0, 64, 96, "DDIM")
    assert axes[1].labels == ["Size: 64x64", "Size: 64x96"] and axes[0].labels[0] == "CFG Scale: 3"


def test_costliest_axis_outermost_and_seed_cells_batched(sdscripts_lora_dir):
    files = f"{sdscripts_lora_dir}/tinylora-000001.safetensors, {sdscripts_lora_dir}/tinylora.safetensors"
    axes = parse_axes(BASE, [("Seed", "1-3"), ("LoRA", files), ("Checkpoint", "tiny, other")], None)
    ordered = execution_order(plan_cells(BASE, axes), axes)
    checkpoints = [c.settings.checkpoint for c in ordered]
    assert checkpoints == ["tiny"] * 6 + ["other"] * 6
    loras = [c.settings.lora_file.rsplit("/", 1)[1] for c in ordered[:6]]
    assert loras == ["tinylora-000001.safetensors"] * 3 + ["tinylora.safetensors"] * 3
    groups = batches(ordered, max_batch=4)
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    assert [c.job.seed for c in groups[0]] == [1, 2, 3]


def test_layout_dimensions_from_cells_counts_and_labels():
    lay = grid_layout(64, 64, ["a", "b", "c"], ["row 1", "row 2"], title="Z: 1", margin=4)
    font_size = 10  # (64 + 64) / 2 / 20 = 3.2, raised to the 10 px minimum
    lh = line_height(get_font(font_size))
    pad = font_size // 2
    label_w = max(64 * 3 // 4, 6 * font_size)
    assert lay.font_size == font_size and lay.label_w == label_w
    assert lay.width == label_w + 3 * 64 + 2 * 4
    assert lay.height == (lh + 2 * pad) * 2 + 2 * 64 + 4
    wrapped = grid_layout(64, 64, ["a very long column label that must wrap"], [], margin=0)
    assert len(wrapped.col_lines[0]) > 1 and wrapped.header_h == len(wrapped.col_lines[0]) * lh + 2 * pad
    assert wrapped.width == 64 and wrapped.label_w == 0
    bare = grid_layout(512, 512, [], [])
    assert (bare.width, bare.height, bare.font_size) == (512, 512, 26)


def test_draw_grid_places_cells_at_their_origins():
    lay = grid_layout(16, 16, ["x1", "x2"], ["y1"], margin=2)
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    img = draw_grid(lay, [[red, blue]])
    assert img.size == (lay.width, lay.height)
    x, y = lay.cell_origin(1, 0)
    assert img.getpixel((x + 8, y + 8)) == (0, 0, 255)
    x, y = lay.cell_origin(0, 0)
    assert img.getpixel((x + 8, y + 8)) == (255, 0, 0)


def test_size_limit_refuses_before_any_work(tmp_path):
    base = CellSettings(SampleRequest(prompt="x", width=2048, height=2048, seed=1), "tiny")
    axes = parse_axes(base, [("Seed", "1-20"), ("Steps", "1-15"), (None, None)], None)

    def never(name):
        raise AssertionError("the model must not load for a refused grid")

    with pytest.raises(SamplingError, match=r"would be [\d ]+ × [\d ]+ px"):
        run_grid(base, axes, tmp_path, load_bundle=never, max_megapixels=200)
    assert not any(tmp_path.iterdir())


def test_epochs_by_weights_grid_on_tiny_model(bundle, sdscripts_lora_dir, tmp_path):
    loads = []

    def load(name):
        loads.append(name)
        return bundle

    axes = parse_axes(BASE, [("LoRA", str(sdscripts_lora_dir / "tinylora*.safetensors")),
                             ("LoRA weight", "0, 8"), ("Prompt S/R", "red, blue")], None)
    result = run_grid(BASE, axes, tmp_path, load_bundle=load, max_batch=4, margin=2, progress=False)
    assert loads == ["tiny"]
    assert len(result.cell_paths) == 3 * 2 * 2 and len(result.sub_grid_paths) == 2
    with Image.open(result.grid_path) as grid:
        params = grid.text["parameters"]
        size = grid.size
    assert 'X Type: LoRA, X Values: "epoch 1, epoch 2, tinylora (final)"' in params
    assert 'Y Type: LoRA weight, Y Values: "0, 8"' in params and 'Z Type: Prompt S/R' in params
    lay = grid_layout(64, 64, axes[0].labels, axes[1].labels, "red", margin=2)
    gap = max(2, lay.font_size)
    assert size == (2 * lay.width + gap, lay.height)
    with Image.open(result.cell_paths[0]) as cell:
        assert "Seed: 5" in cell.text["parameters"]
    # weight-0 cells are the base model's image, whichever epoch they name
    base_img = np.asarray(generate(bundle, BASE.request)[0].image, dtype=np.int16)
    for x in range(3):
        cell = np.asarray(result.images[(x, 0, 0)].image, dtype=np.int16)
        assert np.abs(cell - base_img).max() <= 1
    weighted = np.asarray(result.images[(2, 1, 0)].image, dtype=np.int16)
    assert np.abs(weighted - base_img).max() > 1


def test_cli_shortcut_fills_free_axes():
    args = argparse.Namespace(x_type="CFG Scale", x_values="5,7", y_type=None, y_values=None, z_type=None,
                              z_values=None, lora="out/n-*.safetensors", weights="0.8-1.2 (+0.1)")
    assert axis_specs(args) == [("CFG Scale", "5,7"), ("LoRA", "out/n-*.safetensors"),
                                ("LoRA weight", "0.8-1.2 (+0.1)")]
    args.x_type, args.x_values = None, None
    assert axis_specs(args)[:2] == [("LoRA", "out/n-*.safetensors"), ("LoRA weight", "0.8-1.2 (+0.1)")]


def test_each_checkpoint_loads_once_even_as_innermost_axis(bundle, tmp_path):
    loads = []

    def load(name):
        loads.append(name)
        return bundle

    base = CellSettings(SampleRequest(prompt="a cube", steps=1, width=64, height=64, seed=2), "tiny")
    axes = parse_axes(base, [("Checkpoint", "tiny, tiny-copy"), ("Seed", "1, 2"), (None, None)], None)
    result = run_grid(base, axes, tmp_path, load_bundle=load, progress=False, save_cells=False)
    assert loads == ["tiny", "tiny-copy"]
    assert result.cell_paths == [] and sorted(result.images) == [(x, y, 0) for x in range(2) for y in range(2)]
    assert axes[0].labels == ["tiny", "tiny-copy"]


INIT = Image.new("RGB", (64, 64), (220, 40, 40))


def test_denoising_axis_needs_an_init_image_and_strengths_in_range():
    with pytest.raises(SamplingError) as exc:
        parse_axes(BASE, [("Denoising", "0.3, 0.5"), (None, None), (None, None)], None)
    assert "X axis (Denoising): Denoising needs an init image" in str(exc.value)
    img2img = CellSettings(BASE.request, "tiny", init_image=INIT)
    with pytest.raises(SamplingError) as exc:
        parse_axes(img2img, [(None, None), ("denoising", "0.5, 1.5, 0"), (None, None)], None)
    assert "1.5, 0 outside (0, 1]" in str(exc.value)
    axes = parse_axes(img2img, [("Denoising", "0.2-0.6 (+0.2)"), (None, None), (None, None)], None)
    assert [c.settings.request.denoising_strength for c in plan_cells(img2img, axes)] == pytest.approx([0.2, 0.4, 0.6])


def test_img2img_grid_with_denoising_axis_on_tiny_model(bundle, tmp_path):
    from library.sampling.pipeline import SamplingSession, plan_jobs

    base = CellSettings(dataclasses.replace(BASE.request, steps=4), "tiny", init_image=INIT)
    axes = parse_axes(base, [("Denoising", "0.3, 0.6, 1"), ("Seed", "5, 6"), (None, None)], None)
    assert axes[0].labels == ["Denoising: 0.3", "Denoising: 0.6", "Denoising: 1"]
    result = run_grid(base, axes, tmp_path, load_bundle=lambda name: bundle, max_batch=4, progress=False)
    assert len(result.cell_paths) == 3 * 2 and sorted(result.images) == [(x, y, 0) for x in range(3) for y in range(2)]
    with Image.open(result.grid_path) as grid:
        assert 'X Type: Denoising, X Values: "0.3, 0.6, 1"' in grid.text["parameters"]
    cells = {k: np.asarray(v.image, dtype=np.int16) for k, v in result.images.items()}
    for x in range(2):  # each strength gives its own image (cells with other strengths are never batched together)
        assert np.abs(cells[(x, 0, 0)] - cells[(x + 1, 0, 0)]).max() > 1
    assert "Denoising strength: 0.6," in result.images[(1, 1, 0)].parameters
    # a cell is exactly the img2img image of its settings made alone
    request = dataclasses.replace(base.request, denoising_strength=0.6, seed=6)
    alone = SamplingSession(bundle).run_jobs(request, plan_jobs(request)[1], init_images=[INIT])[0]
    assert np.abs(np.asarray(alone.image, dtype=np.int16) - cells[(1, 1, 0)]).max() <= 1


def test_cells_are_written_as_they_are_made(bundle, tmp_path, monkeypatch):
    """The GUI streams cells into the page: each batch's cells must be on disk before the next batch runs."""
    from library.evaluation import grid as grid_module

    on_disk = []
    original = grid_module.SamplingSession.run_jobs

    def counting(self, *args, **kwargs):
        on_disk.append(len(list((tmp_path / "cells").glob("*.png"))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(grid_module.SamplingSession, "run_jobs", counting)
    base = CellSettings(SampleRequest(prompt="a cube", steps=1, width=64, height=64, seed=2), "tiny")
    axes = parse_axes(base, [("CFG Scale", "1, 5, 9"), (None, None), (None, None)], None)
    result = run_grid(base, axes, tmp_path, load_bundle=lambda name: bundle, max_batch=1, progress=False)
    assert on_disk == [0, 1, 2]
    assert len(result.cell_paths) == 3 and all(p.is_file() for p in result.cell_paths)
    cfgs = []
    for p in result.cell_paths:  # still in grid order
        with Image.open(p) as png:
            cfgs.append(png.text["parameters"].split("CFG scale: ")[1].split(",")[0])
    assert cfgs == ["1", "5", "9"]
