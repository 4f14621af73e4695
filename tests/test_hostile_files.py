"""Hostile and broken files: pickled code is never run, damaged files give our error naming the file."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from library.config_resolve import load_config_source
from library.errors import LorasmithError
from library.lora import load_lora


def kohya_lora() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return {f"{name}.lora_down.weight": torch.randn(4, 8, generator=g),
            f"{name}.lora_up.weight": torch.randn(8, 4, generator=g), f"{name}.alpha": torch.tensor(4.0)}


class Payload:
    """Unpickling this calls `Path.touch(marker)`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickled_callable_in_lora_is_refused_without_running(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": kohya_lora(), "x": Payload(marker)}, path)
    with pytest.raises(LorasmithError) as err:
        load_lora(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the pickled callable was executed"


def test_plain_pickle_with_reduce_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(LorasmithError):
        load_lora(path)
    assert not marker.exists()


def good_safetensors(tmp_path: Path) -> bytes:
    path = tmp_path / "good.safetensors"
    save_file(kohya_lora(), str(path), metadata={"ss_network_dim": "4"})
    return path.read_bytes()


def damaged(data: bytes) -> dict[str, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    flipped = bytearray(data)
    flipped[8 + n // 2] ^= 0x55  # inside the JSON header
    return {
        "zero": b"",
        "short": data[:5],
        "truncated": data[: len(data) - 7],
        "header_cut": data[: 8 + n // 2],
        "lying_length": struct.pack("<Q", len(data) * 4) + data[8:],
        "lying_offsets": data[:8] + data[8:8 + n].replace(b'"data_offsets":[0,', b'"data_offsets":[9,') + data[8 + n:],
        "bit_flipped": bytes(flipped),
        "not_json": struct.pack("<Q", 4) + b"abcd",
    }


@pytest.mark.parametrize("kind", list(damaged(b"\x10" + b"\0" * 7 + b"{}" * 8)))
def test_damaged_lora_safetensors_names_the_file(tmp_path: Path, kind: str) -> None:
    data = damaged(good_safetensors(tmp_path))[kind]
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(data)
    with pytest.raises(LorasmithError) as err:
        load_lora(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["zero", "truncated", "lying_length", "bit_flipped"])
def test_damaged_base_model_safetensors_names_the_file(tmp_path: Path, kind: str) -> None:
    from library.models import load_model_bundle

    data = damaged(good_safetensors(tmp_path))[kind]
    path = tmp_path / f"model_{kind}.safetensors"
    path.write_bytes(data)
    with pytest.raises(LorasmithError) as err:
        load_model_bundle(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix,text", [
    (".toml", "learning_rate = = 3\n[[["),
    (".toml", "learning_rate = 'fast'\n"),
    (".json", "{\"learning_rate\": "),
    (".json", "[1, 2, 3]"),
    (".json", "\x00\xff garbage"),
])
def test_garbage_config_or_preset_names_the_file(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"preset{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(LorasmithError) as err:
        load_config_source(path)
    assert path.name in str(err.value) + "\n".join(err.value.problems)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"not an image at all"])
def test_corrupt_image_in_dataset_names_the_file(tmp_path: Path, content: bytes) -> None:
    from library.config import TrainConfig
    from library.data.prepare import prepare_data

    folder = tmp_path / "1_ohwx"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "good.png")
    (folder / "good.txt").write_text("ohwx")
    (folder / "broken.png").write_bytes(content)
    (folder / "broken.txt").write_text("ohwx")
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(tmp_path), output_dir=str(tmp_path / "o"),
                      caption_extension=".txt", resolution="64")
    try:
        prepared = prepare_data(cfg)
    except LorasmithError as exc:
        assert "broken.png" in str(exc) + "\n".join(exc.problems)
        return
    # a scan that skips the image must say so, naming it
    text = json.dumps(prepared.plan.to_dict())
    assert "broken.png" in text


def _entry(**kw) -> dict:
    return {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], **kw}}


GOOD_ENTRY = _entry()
HOSTILE_HEADERS = {  # each once crashed verify/inspect/--network_weights/<lora:> with a traceback (issue 23)
    "shape_int": _entry(shape=4), "shape_str": _entry(shape=["a"]), "shape_float": _entry(shape=[2.0, 2]),
    "shape_bool": _entry(shape=[True, 4]), "offsets_str": _entry(data_offsets=["0", "16"]),
    "offsets_null": _entry(data_offsets=[None, {}]), "offsets_one": _entry(data_offsets=[16]),
    "offsets_reversed": _entry(data_offsets=[16, 0]), "dtype_int": _entry(dtype=7),
    "metadata_list": {"__metadata__": [1, 2], **GOOD_ENTRY}, "metadata_number": {"__metadata__": {"a": 1}, **GOOD_ENTRY},
    "entry_list": {"x": [1, 2, 3]}, "header_list": [1, 2],
    "nested_200k": b"[" * 200_000 + b"]" * 200_000,
    "nested_metadata": b'{"__metadata__":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
}


def hostile_file(folder: Path, kind: str) -> Path:
    header = HOSTILE_HEADERS[kind]
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = folder / f"{kind}.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    return path


@pytest.mark.parametrize("kind", list(HOSTILE_HEADERS))
def test_hostile_safetensors_header_is_a_named_error_everywhere(tmp_path: Path, kind: str, capsys) -> None:
    from library.cli import main
    from library.models import load_model_bundle

    path = hostile_file(tmp_path, kind)
    for load in (load_lora, load_model_bundle):  # --network_weights and <lora:…> go through load_lora
        with pytest.raises(LorasmithError) as err:
            load(str(path))
        assert str(path) in str(err.value)
    assert main(["inspect", str(path)]) == 2
    assert main(["verify", str(path)]) == 1
    text = capsys.readouterr().err
    assert "Traceback" not in text and text.count(str(path)) >= 2, text


def test_hostile_header_keeps_the_traceback_with_debug(tmp_path: Path, capsys) -> None:
    from library.cli import main

    path = hostile_file(tmp_path, "shape_str")
    assert main(["inspect", str(path), "--debug"]) == 2
    text = capsys.readouterr().err
    assert "Traceback" in text and "shape ['a'] is not a list of non-negative whole numbers" in text
