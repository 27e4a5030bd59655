"""Zero-shot classifier construction from class names and prompt templates.

Why: zero-shot accuracy in the paper follows open_clip's ``build_zero_shot_classifier`` / CLIP_benchmark:
every class name is inserted into every template, each prompt embedding is L2-normalised, the normalised
embeddings are averaged over templates and the mean is L2-normalised again. Column ``c`` of the resulting
``(D, C)`` matrix is class ``c``, and logits are ``100 * normalize(image_features) @ classifier``.

Unlike open_clip, prompts are batched across class x template pairs (a fixed ``batch_size`` of prompts per
forward, regardless of how many templates a class has), the text tower is any ``encode_text`` callable (so
Lightning modules, wrapped or compiled models all work), and the averaging is done in float32 even when the
text tower runs in half precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["build_zeroshot_classifier", "zeroshot_logits"]


def _fill(template: str | Callable[[str], str], classname: str) -> str:
    if callable(template):
        return template(classname)
    # Fills both the positional "{}" placeholder and CLIP_benchmark's "{c}".
    return template.format(classname, c=classname)


def _infer_device(encode_text: Callable[..., Tensor]) -> torch.device | None:
    owner = getattr(encode_text, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        for tensor in (*owner.parameters(), *owner.buffers()):
            return tensor.device
    return None


def build_zeroshot_classifier(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Build the ``(D, C)`` zero-shot classifier (open_clip / CLIP_benchmark semantics).

    Args:
        encode_text: maps a ``(B, L)`` token tensor to ``(B, D)`` text embeddings
            (e.g. ``model.encode_text``).
            Put the model in eval mode first; this function only disables autograd.
        tokenizer: maps a list of strings to a ``(B, L)`` token tensor
            (e.g. ``open_clip.get_tokenizer(name)``).
        classnames: the ``C`` class names; column ``c`` of the result is ``classnames[c]``.
        templates: format strings with one ``{}`` (or ``{c}``) placeholder, or callables
            ``classname -> prompt`` (see :func:`lightning_sarclip.data.templates.get_templates`).
        batch_size: prompts per ``encode_text`` call; batches span class boundaries.
        device: where tokens are sent. ``None`` uses the device of the module that ``encode_text`` is bound to
            (if it is a bound ``nn.Module`` method), otherwise leaves tokens where the tokenizer put them.

    Returns:
        float32 ``(D, C)`` tensor with unit-norm columns, on the device ``encode_text`` returns embeddings on.
    """
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError("classnames must be a non-empty sequence of class names")
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("templates must be a non-empty sequence of templates")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is None:
        device = _infer_device(encode_text)

    num_classes, num_templates = len(classnames), len(templates)
    prompts = [_fill(t, c) for c in classnames for t in templates]  # class-major: prompt p is class p // T
    class_sums: Tensor | None = None
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            tokens = tokenizer(batch)
            if device is not None:
                tokens = tokens.to(device)
            embeddings = encode_text(tokens)
            if embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
                raise ValueError(
                    f"encode_text must return ({len(batch)}, D) embeddings for {len(batch)} prompts, "
                    f"got shape {tuple(embeddings.shape)}"
                )
            embeddings = F.normalize(embeddings.float(), dim=-1)
            if class_sums is None:
                class_sums = embeddings.new_zeros(num_classes, embeddings.shape[1])
            owners = torch.arange(start, start + len(batch), device=embeddings.device) // num_templates
            class_sums.index_add_(0, owners, embeddings)
    assert class_sums is not None
    class_means = class_sums / num_templates
    return F.normalize(class_means, dim=-1).T.contiguous()


def zeroshot_logits(image_features: Tensor, classifier: Tensor, logit_scale: float = 100.0) -> Tensor:
    """Zero-shot logits ``logit_scale * normalize(image_features) @ classifier``, computed in float32.

    ``image_features`` is ``(N, D)`` (normalised here); ``classifier`` is the ``(D, C)`` output of
    :func:`build_zeroshot_classifier`. The fixed scale of 100 matches CLIP_benchmark; it does not change the
    ranking, only softmax temperatures.
    """
    if image_features.ndim != 2 or classifier.ndim != 2:
        raise ValueError(
            f"expected (N, D) image features and a (D, C) classifier, got {tuple(image_features.shape)} and "
            f"{tuple(classifier.shape)}"
        )
    if image_features.shape[1] != classifier.shape[0]:
        raise ValueError(
            f"image features have dim {image_features.shape[1]} "
            f"but the classifier expects {classifier.shape[0]}"
        )
    features = F.normalize(image_features.float(), dim=-1)
    return logit_scale * (features @ classifier.to(features.device, torch.float32))
