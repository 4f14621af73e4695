"""WD14 tagger: a tiny ONNX model with the SmilingWolf signature, built here, tags red and blue images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_tools.tagger import (
    TagOptions,
    TagTable,
    parse_tag_replacement,
    preprocess,
    read_tag_table,
    select_tags,
    tag_folder,
)
from library.cli import main
from library.errors import DatasetError, ModelLoadError

# name, category, weight on (B, G, R) channel means in 0-255, bias: logit = w . mean + b, prob = sigmoid(logit)
TAGS = [
    ("general", 9, (0, 0, 0), 1.0),             # rating, 0.73
    ("sensitive", 9, (0, 0, 0), 0.0),           # rating, 0.5
    ("red_shirt", 0, (0, 0, 20 / 255), -10.0),  # ~1 on red, ~0 on blue
    ("blue_sky", 0, (20 / 255, 0, 0), -10.0),   # ~1 on blue, ~0 on red
    ("long_hair", 0, (0, 0, 0), 10.0),          # always
    ("^_^", 0, (0, 0, 0), 10.0),                # always; short, keeps its underscore
    ("hatsune_miku", 4, (0, 0, 0.405 / 255), 0.0),  # character: 0.6 on red, 0.5 on blue
]


def _tiny_tagger(folder: Path, batch: int | str = "batch") -> None:
    """model.onnx: NHWC float32 [N,448,448,3] -> mean over H,W -> linear -> sigmoid [N,len(TAGS)]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True)
    weight = np.array([t[2] for t in TAGS], dtype=np.float32).T  # [3, T]
    bias = np.array([t[3] for t in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])],
        "tiny_wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, 448, 448, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(TAGS)])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, (n, c, _, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def tagger(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _tiny_tagger(tmp_path / "wd14")
    return tmp_path / "wd14"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(src / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(src / "blue.png")
    (src / "blue.txt").write_text("my own caption\n")
    return src


def test_preprocess_pads_white_to_square_and_flips_to_bgr():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    out = preprocess(wide, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.float32
    assert out[4, 4].tolist() == [0.0, 0.0, 255.0]  # red in BGR
    assert out[0, 4].tolist() == [255.0, 255.0, 255.0]  # white padding above and below
    assert out.max() <= 255.0


def test_select_tags_thresholds_order_and_replacements():
    table = TagTable([t[0] for t in TAGS], [t[1] for t in TAGS])
    probs = np.array([0.73, 0.5, 0.99, 0.01, 0.99, 0.99, 0.6])
    assert select_tags(probs, table, TagOptions()) == ["red_shirt", "long_hair", "^_^", "hatsune_miku"]
    options = TagOptions(character_threshold=0.85, remove_underscore=True, undesired=["long hair"],
                         replacements={"red shirt": "crimson shirt"}, use_rating_tags=True)
    assert select_tags(probs, table, options) == ["general", "crimson shirt", "^_^"]
    options = TagOptions(general_threshold=0.98, character_tags_first=True, always_first=["^_^", "absent"])
    assert select_tags(probs, table, options) == ["^_^", "hatsune_miku", "red_shirt", "long_hair"]
    assert select_tags(probs, table, TagOptions(general_threshold=0.995)) == ["hatsune_miku"]
    assert parse_tag_replacement("a,b;c\\,d,e") == {"a": "b", "c,d": "e"}
    with pytest.raises(DatasetError, match="bad tag replacement"):
        parse_tag_replacement("a;b")


def test_tag_folder_with_tiny_onnx_model(tagger, photos, tmp_path):
    dst = tmp_path / "out"
    run = tag_folder(photos, dst, tagger, TagOptions(character_threshold=0.55, remove_underscore=True),
                     prefix="ohwx", caption_extension=".txt", progress=False)
    assert (dst / "red.txt").read_text() == "ohwx, red shirt, long hair, ^_^, hatsune miku\n"
    assert (dst / "blue.txt").read_text() == "my own caption\n"  # had a caption: copied, not re-tagged
    assert [p.name for p in run.written] == ["red.txt"] and [p.name for p in run.skipped_existing] == ["blue.txt"]
    assert (dst / "red.png").is_file()
    run = tag_folder(photos, dst, tagger, TagOptions(character_threshold=0.85), caption_extension=".txt",
                     overwrite=True, batch_size=2, progress=False)
    assert (dst / "blue.txt").read_text() == "blue_sky, long_hair, ^_^\n"
    assert (dst / "red.txt").read_text() == "red_shirt, long_hair, ^_^\n"
    assert (photos / "blue.txt").read_text() == "my own caption\n"  # source untouched


def test_append_tags_keeps_the_own_caption_and_adds_what_it_lacks(tagger, photos, tmp_path):
    (photos / "blue.txt").write_text("my own caption, long_hair\n")
    tag_folder(photos, photos, tagger, TagOptions(character_threshold=0.85), prefix="ohwx",
               caption_extension=".txt", in_place=True, append=True, progress=False)
    assert (photos / "blue.txt").read_text() == "ohwx, my own caption, long_hair, blue_sky, ^_^\n"
    assert (photos / "red.txt").read_text() == "ohwx, red_shirt, long_hair, ^_^\n"


def test_tag_folder_errors(tagger, photos, tmp_path):
    with pytest.raises(ModelLoadError, match="no WD14 tagger"):
        tag_folder(photos, tmp_path / "o", tmp_path / "missing", progress=False)
    _tiny_tagger(tmp_path / "fixed", batch=1)
    with pytest.raises(ModelLoadError, match="fixed batch size needs --batch_size 1"):
        tag_folder(photos, tmp_path / "o", tmp_path / "fixed", batch_size=2, overwrite=True, progress=False)
    run = tag_folder(photos, tmp_path / "o", tmp_path / "fixed", batch_size=1, overwrite=True, progress=False)
    assert len(run.written) == 2
    (tagger / "selected_tags.csv").write_text("id,tag\n0,x\n")
    with pytest.raises(ModelLoadError, match="not a WD14 tag list"):
        read_tag_table(tagger / "selected_tags.csv")
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n0,only_one,0,1\n")
    with pytest.raises(ModelLoadError, match="gives 7 scores"):
        tag_folder(photos, tmp_path / "o", tagger, overwrite=True, progress=False)


def test_cli_caption_tag_in_place(tagger, photos, capsys):
    code = main(["dataset", "caption", "tag", str(photos), str(photos), "--in_place", "--model", str(tagger),
                 "--thresh", "0.35", "--character_threshold", "0.85", "--caption_extension", ".txt",
                 "--undesired_tags", "^_^", "--tag_replacement", "long_hair,long hair",
                 "--trigger", "ohwx woman", "--no_progress"])
    assert code == 0
    assert (photos / "red.txt").read_text() == "ohwx woman, red_shirt, long hair\n"
    assert (photos / "blue.txt").read_text() == "my own caption\n"  # never overwritten without --overwrite


def test_gui_dataset_tab_tags_a_folder(tagger, photos, tmp_path):
    from types import SimpleNamespace

    gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")
    from gui.context import GuiContext
    from gui.dataset_tab import DatasetTab

    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    with gr.Blocks():
        widgets = {n: gr.Textbox(render=False) for n in ("train_data_dir", "reg_data_dir", "logging_dir",
                                                          "output_dir")}
        tab = DatasetTab(ctx, SimpleNamespace(form_inputs={gr.Textbox(render=False)}, widgets=widgets, named=dict))
    out = tab.tag(str(photos), str(tagger), 0.35, 0.85, "ohwx", "^_^", ".txt", False)
    assert out[tab.message].startswith("**Tagged**")
    assert (photos / "red.txt").read_text() == "ohwx, red_shirt, long_hair\n"
    assert (photos / "blue.txt").read_text() == "my own caption\n"
    out = tab.tag(str(photos), "/etc", 0.35, 0.85, "", "", ".txt", False)
    assert "outside the folders" in out[tab.message]


def test_missing_onnxruntime_names_the_extra(tagger, photos, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ModelLoadError, match="needs onnxruntime") as info:
        tag_folder(photos, tmp_path / "o", tagger, progress=False)
    assert "lorasmith[caption]" in str(info.value)
