"""Model hashes: full file SHA-256, A1111's legacy hash, state-dict hash; tokenizer byte table."""
from __future__ import annotations

import hashlib

import torch

from library.models.hashing import file_sha256, legacy_hash, state_dict_sha256
from library.models.tokenizer import bytes_to_unicode


def test_file_hashes_on_known_bytes(tmp_path):
    data = bytes(range(256)) * 8192  # 2 MiB
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    # A1111's old hash reads 64 KiB starting at 1 MiB.
    assert legacy_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_state_dict_hash_ignores_order_but_not_values_or_dtype():
    a = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.tensor(1.5)}
    b = {"y": torch.tensor(1.5), "x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256({**a, "y": torch.tensor(1.25)})
    assert state_dict_sha256(a) != state_dict_sha256({**a, "x": a["x"].to(torch.float16)})
    assert state_dict_sha256(a) != state_dict_sha256({**a, "x": a["x"].reshape(3, 2)})


def test_bytes_to_unicode_is_clips_printable_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord("!")] == "!"
    assert table[ord(" ")] == "Ġ"  # space is shifted above 255: chr(256 + 32)
    assert not any(ch.isspace() for ch in table.values())
