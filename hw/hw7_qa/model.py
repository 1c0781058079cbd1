"""HW7 networks: a pretrained extractive-QA model from the Hugging Face hub or a local folder
(model.name), or, offline, a small BERT for question answering built from the config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from torch import nn

from common.core.errors import UserError

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub (none when HF_HUB_OFFLINE is set): the library's own
    attempts retry with back-off for about a minute before they give up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def hf_load(loader, name: str):
    """A pretrained model or tokenizer from a folder, else from the local Hugging Face cache,
    else (one quick check that the hub answers first) from the hub; one clear line when none
    has it, within seconds offline."""
    try:
        if Path(name).exists():
            return loader(name)
        try:
            return loader(name, local_files_only=True)
        except (OSError, ValueError):
            if not hub_reachable():
                raise OSError(f"not in the local cache, and {HUB_HOST[0]} cannot be "
                              "reached") from None
        return loader(name)
    except (OSError, ValueError) as exc:
        where = "the folder" if Path(name).exists() else "the Hugging Face cache"
        raise UserError(
            f"model.name={name!r}: cannot load it from {where} ({str(exc).splitlines()[0]}); "
            f"download it where there is network (huggingface-cli download {name}) and copy "
            "~/.cache/huggingface here, pass a local folder, or set model.name = \"\" for the "
            "small offline BERT (configs/hw7_cpu.toml)") from None


def pretrained_qa_model(name: str) -> nn.Module:
    from transformers import AutoModelForQuestionAnswering

    return hf_load(AutoModelForQuestionAnswering.from_pretrained, name)


def small_bert(cfg, *, vocab_size: int, max_length: int) -> nn.Module:
    """BertForQuestionAnswering of model.hidden / layers / heads / ff_dim / dropout, random
    weights, positions for at least max_length tokens."""
    from transformers import BertConfig, BertForQuestionAnswering

    if cfg.hidden % cfg.heads:
        raise UserError(f"model.hidden={cfg.hidden} must be a multiple of "
                        f"model.heads={cfg.heads}")
    return BertForQuestionAnswering(BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ff_dim,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=max(512, max_length)))
