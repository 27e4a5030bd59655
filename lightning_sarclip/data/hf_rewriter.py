"""A caption rewriter on a local Hugging Face text model (``transformers``, the optional ``rewrite`` extra).

    pip install 'lightning-sarclip[rewrite]'

In a corpus config::

    rewriter:
      class_path: lightning_sarclip.data.hf_rewriter.HFParaphraser
      init_args: {model: /models/flan-t5-base, max_new_tokens: 48}

Each caption is paraphrased on its own with greedy decoding, so the same caption gives the same paraphrase: the
cache of :mod:`lightning_sarclip.data.rewriters` then makes a rebuild identical without calling the model. The
model is read from a local folder or from the Hugging Face cache; nothing is downloaded unless ``allow_download``
is set, and ``HF_HUB_OFFLINE=1`` forbids it even then (a corpus build should not depend on the network). Both
sequence-to-sequence (T5, BART) and decoder-only models work; a decoder-only model's prompt is cut from its output.

Why a blank or over-long answer gives back the input caption: one bad generation must not stop a build of a
million images, and the original caption is always a correct one.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_sarclip.data.records import SARRecord

__all__ = ["DEFAULT_PROMPT", "EXTRA", "HFParaphraser"]

#: The pip extra that installs ``transformers``.
EXTRA = "rewrite"
#: ``{caption}`` is replaced by the caption to paraphrase.
DEFAULT_PROMPT = "Paraphrase this description of a radar image, keeping every fact: {caption}"
_MISSING = (f"HFParaphraser needs the optional dependency transformers: pip install 'lightning-sarclip[{EXTRA}]' "
            "(or pip install transformers)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class HFParaphraser:
    """Paraphrase captions with a local ``transformers`` text model (see the module docstring).

    Args:
        model: a local model folder, or a hub id already in the Hugging Face cache.
        prompt: instruction around each caption, with a ``{caption}`` placeholder.
        max_new_tokens: longest paraphrase, in tokens.
        max_length_ratio: a paraphrase longer than this many times its caption (in characters) is refused (the
            input caption is kept): a model that rambles adds claims the image does not support.
        device: ``cpu``, ``cuda`` or ``cuda:<n>``.
        allow_download: fetch a hub id that is not cached (never under ``HF_HUB_OFFLINE=1``).
        revision: hub revision; also a way to give the cache another identity when the weights change.
    """

    def __init__(self, model: str, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64,
                 max_length_ratio: float = 3.0, device: str = "cpu", allow_download: bool = False,
                 revision: str | None = None) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise ImportError(_MISSING)
        problems = self.config_problems({"prompt": prompt, "max_new_tokens": max_new_tokens})
        if problems:
            raise ValueError(f"HFParaphraser: {'; '.join(problems)}")
        import transformers

        self.prompt, self.max_new_tokens, self.max_length_ratio = prompt, int(max_new_tokens), float(max_length_ratio)
        self.device = device
        local = Path(model).expanduser().is_dir()
        options: dict[str, Any] = {"local_files_only": local or not allow_download or _offline()}
        if revision is not None and not local:
            options["revision"] = revision
        source = str(Path(model).expanduser()) if local else model
        try:
            config = transformers.AutoConfig.from_pretrained(source, **options)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, **options)
            self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            auto = transformers.AutoModelForSeq2SeqLM if self.seq2seq else transformers.AutoModelForCausalLM
            self.model = auto.from_pretrained(source, **options).to(device).eval()
        except OSError as err:
            where = "folder" if local else "hub id (not in the Hugging Face cache; set allow_download: true, " \
                "without HF_HUB_OFFLINE, to fetch it)"
            raise ValueError(f"HFParaphraser: cannot load model {model!r} as a {where}: {err}") from err

    @classmethod
    def config_problems(cls, init_args: dict[str, Any]) -> list[str]:
        """What is wrong before loading anything: the missing extra, a prompt without ``{caption}``."""
        problems = []
        if importlib.util.find_spec("transformers") is None:
            problems.append(_MISSING)
        prompt = init_args.get("prompt", DEFAULT_PROMPT)
        if not isinstance(prompt, str) or "{caption}" not in prompt:
            problems.append(f"init_args.prompt: expected a string with a {{caption}} placeholder, got {prompt!r}")
        tokens = init_args.get("max_new_tokens", 64)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            problems.append(f"init_args.max_new_tokens: expected an integer >= 1, got {tokens!r}")
        return problems

    def rewrite(self, record: SARRecord, captions: Sequence[str]) -> list[str]:
        """One paraphrase per caption (the caption itself where the model's answer is blank or too long)."""
        return [self._paraphrase(caption) for caption in captions]

    def _paraphrase(self, caption: str) -> str:
        import torch

        text = self.prompt.replace("{caption}", caption)
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            pad = self.tokenizer.pad_token_id
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                         pad_token_id=self.tokenizer.eos_token_id if pad is None else pad)
        tokens = output[0] if self.seq2seq else output[0][inputs["input_ids"].shape[1]:]
        answer = " ".join(self.tokenizer.decode(tokens, skip_special_tokens=True).split())
        if not answer or len(answer) > self.max_length_ratio * max(len(caption), 1):
            return caption
        return answer
