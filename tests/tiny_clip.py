"""A tiny random CLIP checkpoint built offline, for tests that need a real ``transformers`` CLIP folder.

The Hub is unreachable in tests, so the tokenizer is assembled from a hand-made vocabulary: every printable ASCII
character, alone and with CLIP's end-of-word suffix ``</w>``, and no merges. That is a valid byte-level BPE for
ASCII text (byte-level maps printable ASCII to itself), just one token per character.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

IMAGE_SIZE = 32
"""The processor's shortest edge and crop size, and the vision model's input size."""


def make_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIPModel, its tokenizer and image processor to ``path``; return ``path``."""
    path = Path(path)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.digits + string.ascii_letters + string.punctuation:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])

    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            # The text tower pools at the first end-of-text token: its id must match the tokenizer's.
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(path)
    return path
