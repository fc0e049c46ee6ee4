"""What a sample is conditioned on: for context-free samples the model's beginning-of-sequence
token alone; for contextual (CS) samples the prompts of a prepared fine-tuning set
(:func:`task_prompts`).

[CFS] Sec 2 and Table 1: "Our input prompt is essentially the model's ``bos_token``" (OLMo-1B:
``<|endoftext|>``; R1-Distill-Llama-8B: ``<｜begin▁of▁sentence｜>``). The token is read from the
model's tokenizer; a tokenizer without a BOS token falls back to its EOS token (the document
separator such models were trained with, e.g. GPT-2 style vocabularies); a tokenizer with neither
needs an explicit prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError

from ..finetune.data import iter_documents

log = logging.getLogger(__name__)

__all__ = ["StartToken", "resolve_prompt", "task_prompts"]


@dataclass(frozen=True)
class StartToken:
    ids: List[int]
    #: "bos", "eos" (fallback), "explicit-id", "explicit-text"
    source: str
    eos_token_id: Optional[int]


def resolve_prompt(tokenizer, *, token_id: Optional[int] = None, text: Optional[str] = None) -> StartToken:
    """The context-free prompt for ``tokenizer``: an explicit id or string, else BOS, else EOS.

    ``text`` that is a single vocabulary entry (e.g. ``"<|endoftext|>"``) maps to that id; other
    text is tokenized without special tokens (e.g. ``"\\n"``, which [CFS] Sec 3 found biases the
    samples towards code).
    """
    eos = tokenizer.eos_token_id
    if token_id is not None and text is not None:
        raise OLMoConfigurationError("give either prompt_token_id or prompt (text), not both")
    if token_id is not None:
        if not 0 <= token_id < len(tokenizer):
            raise OLMoConfigurationError(
                f"prompt_token_id={token_id} is outside the tokenizer's vocabulary [0, {len(tokenizer)})"
            )
        return StartToken([int(token_id)], "explicit-id", eos)
    if text is not None:
        if text == "":
            raise OLMoConfigurationError("prompt text is empty; pass a token string such as '<|endoftext|>'")
        vocab = tokenizer.get_vocab()
        if text in vocab:
            return StartToken([int(vocab[text])], "explicit-text", eos)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise OLMoConfigurationError(f"prompt {text!r} tokenizes to nothing")
        return StartToken([int(i) for i in ids], "explicit-text", eos)
    if tokenizer.bos_token_id is not None:
        return StartToken([int(tokenizer.bos_token_id)], "bos", eos)
    if eos is not None:
        log.warning("tokenizer has no BOS token; prompting with its EOS token %d instead", eos)
        return StartToken([int(eos)], "eos", eos)
    raise OLMoConfigurationError(
        "the model's tokenizer defines neither a BOS nor an EOS token, so there is no 'empty "
        "context' to prompt with; pass the start token explicitly (--prompt-token-id ID or "
        "--prompt TOKEN)"
    )


def task_prompts(task_dir: str | Path, split: str = "train") -> List[np.ndarray]:
    """The prompt (masked prefix) of every document of a prepared prompt/response task set."""
    prompts = []
    for k, (tokens, mask) in enumerate(iter_documents(task_dir, split)):
        if not mask.any():
            raise OLMoConfigurationError(f"{task_dir}: {split} document {k} has no response (no target token)")
        first = int(np.argmax(mask))
        if first == 0:
            raise OLMoConfigurationError(
                f"{task_dir}: {split} document {k} has no prompt (its first token is a target); "
                "contextual generation needs prompt/response data"
            )
        prompts.append(tokens[:first])
    if not prompts:
        raise OLMoConfigurationError(f"{task_dir}: the {split} split has no documents")
    return prompts
