"""The embedded demo model: the MiniCPM-V 4.5 architecture at CPU scale, and its tokenizer.

`demo_config` is the `demo` preset: a 4-layer 128-wide SigLIP-style ViT, a 32-query 3D-Resampler and a
4-layer 192-wide Qwen3 decoder over a <1k byte-level BPE vocabulary (about 3 M parameters, ~6 MB in
bfloat16). Slices are 224 px with 28 px patches (8 x 8 = 64 patches per slice: the 2-core CPU budget),
so a 448 x 448 image is cut into 4 slices + an overview (320 patches, not 1024), and images above
224 x 224 still slice as in the full model. `init_model_dir` writes the starting folder of the training pipeline
(recipes/demo.py): tokenizer trained on the task corpus, configs, random weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from minicpmv.config import LLMConfig, ModelConfig, ProcessorConfig, ResamplerConfig, VisionConfig
from minicpmv.processor.tokenizer import SPECIAL_TOKENS

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
SCALE_RESOLUTION = 224
PATCH_SIZE = 28
QUERY_NUM = 32
# Special tokens of the official vocabulary, by name; `special=False` ones are kept when decoding
# with skip_special_tokens (as `<think>` / `</think>` in the official tokenizer).
EXTRA_SPECIAL = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>", "<|im_sep|>")
NOT_SPECIAL = ("<think>", "</think>")


def demo_config(vocab_size: int, bos_token_id: int, eos_token_id: int) -> ModelConfig:
    """The demo preset for a tokenizer of `vocab_size` ids (bos = `<|endoftext|>`, eos = `<|im_end|>`)."""
    vision = VisionConfig(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=2,
                          patch_size=PATCH_SIZE, image_size=PATCH_SIZE * 16)
    llm = LLMConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_layers=4, num_heads=3,
                    num_kv_heads=1, head_dim=64, rope_theta=10_000.0, max_position_embeddings=4096,
                    bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    resampler = ResamplerConfig(num_queries=QUERY_NUM, embed_dim=llm.hidden_size, num_heads=3,
                                kv_dim=vision.hidden_size)
    return ModelConfig(vision=vision, resampler=resampler, llm=llm, query_num=QUERY_NUM,
                       scale_resolution=SCALE_RESOLUTION, patch_size=PATCH_SIZE, torch_dtype="float32",
                       name_or_path="minicpmv-demo")


def demo_processor_config() -> ProcessorConfig:
    return ProcessorConfig(scale_resolution=SCALE_RESOLUTION, patch_size=PATCH_SIZE, image_feature_size=QUERY_NUM)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts`, with every MiniCPM-V special token.

    Digits are split one per token (numbers are read and added digit by digit), the other text as
    in GPT-2 (words with their leading space). Special tokens get the first ids: `<|endoftext|>` = 0.
    Example: 'The sum is 12.' -> ['The', 'Ġsum', 'Ġis', 'Ġ', '1', '2', '.'].
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    names = ["<|endoftext|>", *[t for t in SPECIAL_TOKENS.values() if t != "<|endoftext|>"], *EXTRA_SPECIAL]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in names])
    return tok


def init_model_dir(out_dir: str | Path, texts: Iterable[str], seed: int = 0, vocab_size: int = 1024,
                   init: str = "fan_in") -> Path:
    """Write tokenizer.json, preprocessor_config.json, config.json and random float32 weights to `out_dir`.

    init "fan_in" (N(0, 1/fan_in) matrices, see `weights.init_random_`): with the checkpoints' N(0, 0.02)
    a model this narrow learns the text prior and leaves its visual tokens constant."""
    from minicpmv.model.minicpmv import MiniCPMV
    from minicpmv.processor.tokenizer import Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(texts, vocab_size).save(str(out / "tokenizer.json"))
    tok = Tokenizer.from_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(demo_processor_config().to_hf_dict(), indent=2) + "\n")
    config = demo_config(tok.vocab_size, bos_token_id=tok.pad_id, eos_token_id=tok.im_end_id)
    MiniCPMV.from_config(config, seed=seed, init=init).save_pretrained(out)
    return out
