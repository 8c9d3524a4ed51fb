"""Architecture of the built-in model: SD's classes at a size a CPU can train.

AutoencoderKL (64 px -> 16x16x4 latents), UNet2DConditionModel with
cross-attention at 16x16 and 8x8 (and the 4x4 mid block), a small
CLIPTextModel, and a CLIPTokenizer whose BPE makes every word of the world
one token.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from .world import vocabulary

MAX_TOKENS = 40
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_tokenizer_files(out_dir: Path, words: list[str] | None = None) -> None:
    """Train a BPE on the world's words and write vocab.json and merges.txt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = words or vocabulary()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list(string.ascii_lowercase + string.digits + "<>_-.,!?'")
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(words * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for ch in alphabet:  # every character also as a word end, as CLIP's vocabulary has
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tokenizer(out_dir: Path):
    """A stock CLIPTokenizer over the world's vocabulary, saved in out_dir."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir), model_max_length=MAX_TOKENS, pad_token=EOS)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def text_encoder_config(vocab_size: int, bos_id: int, eos_id: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=128,
    )


def vae_kwargs() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def unet_kwargs() -> dict:
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def scheduler_kwargs() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
