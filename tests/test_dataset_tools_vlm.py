"""Vision-language captioning through AutoProcessor/AutoModelForImageTextToText with a tiny BLIP built here."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_dataset_tools_captions import _tiny_blip  # tests/ is on sys.path under pytest

from dataset_tools.vlm import load_vlm, vlm_caption_folder, vlm_captioner
from library.cli import main
from library.errors import DatasetError, ModelLoadError

VOCAB = {"a", "photo", "of", "woman", "man", "dog", "red", "the"}


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vlm") / "blip"
    _tiny_blip(folder)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    src.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (24, 24), colour).save(src / f"{i}.png")
    (src / "2.txt").write_text("keep me\n")
    return src


def test_prompt_continues_the_caption(blip_dir, photos, tmp_path):
    dst = tmp_path / "out"
    run = vlm_caption_folder(photos, dst, blip_dir, prompt="a photo of", prefix="ohwx woman", batch_size=2,
                             max_new_tokens=3, num_beams=1, caption_extension=".txt", progress=False)
    assert sorted(p.name for p in run.written) == ["0.txt", "1.txt"]
    assert (dst / "2.txt").read_text() == "keep me\n"  # had its own caption
    for name in ("0.txt", "1.txt"):
        text = (dst / name).read_text().strip()
        # The prompt is kept as the start of the caption (a random tiny model may add only [UNK]s).
        assert text.startswith("ohwx woman, a photo of"), text
        assert set(text.removeprefix("ohwx woman, a photo of").split()) <= VOCAB, text


def test_generation_is_deterministic_and_matches_direct_generate(blip_dir):
    import torch

    processor, model = load_vlm(blip_dir)
    picture = Image.new("RGB", (24, 24), (255, 0, 0))
    first = vlm_captioner(processor, model, max_new_tokens=4, num_beams=1)([picture])
    inputs = processor(images=[picture], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, min_new_tokens=1, num_beams=1, do_sample=False)
    assert first == [" ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())]
    assert first == vlm_captioner(processor, model, max_new_tokens=4, num_beams=1)([picture])
    assert first[0] and set(first[0].split()) <= VOCAB
    prompted = vlm_captioner(processor, model, prompt="the dog", max_new_tokens=4, num_beams=1)([picture])
    assert prompted[0].startswith("the dog")


def test_chat_style_needs_a_chat_template_and_bad_inputs_are_named(blip_dir, photos, tmp_path):
    with pytest.raises(ModelLoadError, match="no chat template"):
        vlm_caption_folder(photos, tmp_path / "o", blip_dir, style="chat", progress=False)
    with pytest.raises(DatasetError, match="unknown prompt style"):
        vlm_caption_folder(photos, tmp_path / "o", blip_dir, style="poem", progress=False)
    with pytest.raises(ModelLoadError, match="no vision-language model"):
        vlm_caption_folder(photos, tmp_path / "o", tmp_path / "missing", progress=False)


def test_cli_caption_vlm_in_place_keeps_existing(blip_dir, photos):
    code = main(["dataset", "caption", "vlm", str(photos), str(photos), "--in_place", "--model", str(blip_dir),
                 "--max_new_tokens", "3", "--num_beams", "1", "--trigger", "ohwx", "--caption_extension", ".txt",
                 "--no_progress"])
    assert code == 0
    assert (photos / "2.txt").read_text() == "keep me\n"
    assert (photos / "0.txt").read_text().startswith("ohwx, ")


def _tiny_llava(folder: Path) -> list[str]:
    """A random LLaVA (tiny CLIP vision + tiny Llama) with a word-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "describe", "it",
             "a", "photo", "of", "woman", "red", "the"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, chat_template=template, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_attention_heads": 2, "num_hidden_layers": 2, "image_size": 16, "patch_size": 8,
                       "projection_dim": 16},
        text_config={"model_type": "llama", "vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2,
                     "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        image_token_index=4, vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return words


def test_chat_style_keeps_only_the_answer(tmp_path):
    import torch

    words = _tiny_llava(tmp_path / "llava")
    processor, model = load_vlm(tmp_path / "llava")
    pictures = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 255))]
    captions = vlm_captioner(processor, model, prompt="describe it", style="chat", max_new_tokens=4,
                             num_beams=1)(pictures)
    assert len(captions) == 2 and not any(c.startswith("USER:") for c in captions)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=pictures, text=[text] * 2, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, min_new_tokens=1, num_beams=1, do_sample=False)
    full = processor.batch_decode(ids, skip_special_tokens=True)
    assert all(f.split()[:3] == ["USER:", "describe", "it"] for f in full)  # the echo chat style removes
    answers = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert captions == [" ".join(a.split()) for a in answers]
    assert all(set(c.split()) <= set(words) for c in captions) and any(captions)


def _tiny_florence2(folder: Path) -> None:
    """A random Florence-2 (two-stage DaViT + one-layer BART) whose processor turns task tokens into prompts."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    words = ["<s>", "<pad>", "</s>", "<unk>", "<image>", "What", "does", "the", "image", "describe?",
             "a", "photo", "of", "woman", "red"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    # 32x32 -> 8x8 -> 4x4 = 16 patch features + 1 pooled = 17 image tokens.
    images = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False)
    images.image_seq_length = 17
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    torch.manual_seed(0)
    config = Florence2Config(
        vision_config={"depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1],
                       "patch_prenorm": [False, True], "embed_dim": [8, 16], "num_heads": [2, 2],
                       "num_groups": [2, 2], "window_size": 2, "projection_dim": 16, "drop_path_rate": 0.0},
        text_config={"vocab_size": len(words), "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                     "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
                     "decoder_ffn_dim": 32, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0,
                     "eos_token_id": 2, "decoder_start_token_id": 2},
        image_token_id=4)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_task_style_runs_a_florence2_task_token(tmp_path, photos):
    import torch

    _tiny_florence2(tmp_path / "florence2")
    processor, model = load_vlm(tmp_path / "florence2")
    assert type(model).__name__ == "Florence2ForConditionalGeneration"
    pictures = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 255))]
    captions = vlm_captioner(processor, model, prompt="<CAPTION>", style="task", max_new_tokens=4,
                             num_beams=1)(pictures)
    inputs = processor(images=pictures, text=["<CAPTION>"] * 2, return_tensors="pt")
    prompt = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert prompt.split() == ["What", "does", "the", "image", "describe?"]  # the task token became its prompt
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, min_new_tokens=1, num_beams=1, do_sample=False)
    assert captions == [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
    assert all(captions)
    # The default task prompt (<MORE_DETAILED_CAPTION>) through the folder tool, trigger first.
    run = vlm_caption_folder(photos, tmp_path / "out", tmp_path / "florence2", style="task", prefix="ohwx",
                             max_new_tokens=3, num_beams=1, caption_extension=".txt", progress=False)
    assert sorted(p.name for p in run.written) == ["0.txt", "1.txt"]
    assert (tmp_path / "out" / "0.txt").read_text().startswith("ohwx, ")
