"""InfoNCELoss equals open_clip's ClipLoss: values and gradients, in one process and across two gloo ranks."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from lightning_sarclip.losses import InfoNCELoss, caption_groups, label_groups
from tests.distributed import run_distributed


def _features(n: int, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + 0.5 * torch.randn(n, d, generator=g), dim=-1)
    return image, text


def _loss_and_grads(loss_fn, image, text, scale):
    image = image.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(scale), requires_grad=True)
    loss = loss_fn(image, text, log_scale.exp())
    loss.backward()
    return loss.detach(), image.grad, text.grad, log_scale.grad


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_single_process_matches_open_clip(scale):
    image, text = _features(12)
    ours = _loss_and_grads(InfoNCELoss(), image, text, scale)
    ref = _loss_and_grads(ClipLoss(), image, text, scale)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_perfect_alignment_gives_low_loss_and_mismatch_gives_high():
    image, _ = _features(8)
    low = InfoNCELoss()(image, image, torch.tensor(100.0))
    high = InfoNCELoss()(image, image.roll(1, dims=0), torch.tensor(100.0))
    assert low < 0.1 < math.log(8) < high


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(5, 8), 1.0)


def _rank_fn(rank, world_size, local_loss, gather_with_grad, ours):
    image, text = _features(2 * 6, seed=1)
    rows = slice(rank * 6, (rank + 1) * 6)
    cls = InfoNCELoss if ours else ClipLoss
    loss_fn = cls(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
    loss, gi, gt, gs = _loss_and_grads(loss_fn, image[rows], text[rows], 14.3)
    return {"loss": loss, "image_grad": gi, "text_grad": gt, "scale_grad": gs}


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_gloo_ranks_at_b_equal_one_rank_at_2b(local_loss):
    """What DDP sees: mean over ranks of (loss, grads) at batch B each equals one process at batch 2B."""
    image, text = _features(12, seed=1)
    ref_loss, ref_gi, ref_gt, ref_gs = _loss_and_grads(InfoNCELoss(), image, text, 14.3)
    results = run_distributed(_rank_fn, 2, args=(local_loss, True, True))
    ocl = run_distributed(_rank_fn, 2, args=(local_loss, True, False))
    mean_loss = sum(r["loss"] for r in results) / 2
    torch.testing.assert_close(mean_loss, ref_loss, rtol=1e-5, atol=1e-6)
    if not local_loss:  # the global loss is the same number on every rank
        for r in results:
            torch.testing.assert_close(r["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    # DDP averages parameter gradients over ranks; the feature gradients, divided the same way, are the
    # 2B-batch gradients of this rank's rows.
    image_grad = torch.cat([r["image_grad"] for r in results]) / 2
    text_grad = torch.cat([r["text_grad"] for r in results]) / 2
    torch.testing.assert_close(image_grad, ref_gi, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(text_grad, ref_gt, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sum(r["scale_grad"] for r in results) / 2, ref_gs, rtol=1e-5, atol=1e-7)
    # ...and identical, rank by rank, to open_clip's ClipLoss in the same 2-process set-up.
    for ours, theirs in zip(results, ocl, strict=True):
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7)


def test_without_gather_with_grad_matches_open_clip():
    ours = run_distributed(_rank_fn, 2, args=(False, False, True))
    theirs = run_distributed(_rank_fn, 2, args=(False, False, False))
    for a, b in zip(ours, theirs, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_invalid_rank_is_refused():
    with pytest.raises(ValueError, match="rank"):
        InfoNCELoss(rank=2, world_size=2)


# ---------------------------------------------------------------------------------------- label-aware contrast
GROUPS = torch.tensor([3, 1, 3, 0, 1, 3, 2, 0, -5, 2, 1, -6])  # shared labels, two unlabelled pairs


def _loss_and_grads_grouped(loss_fn, image, text, scale, groups):
    return _loss_and_grads(lambda i, t, s: loss_fn(i, t, s, groups=groups), image, text, scale)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_distinct_groups_are_exactly_open_clip(scale):
    """Without shared labels the multi-positive target is the identity: ClipLoss, values and gradients."""
    image, text = _features(12)
    ours = _loss_and_grads_grouped(InfoNCELoss(), image, text, scale, torch.arange(12) * 7 - 20)
    ref = _loss_and_grads(ClipLoss(), image, text, scale)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_shared_groups_spread_the_target_over_their_pairs():
    """Brute force, row by row: -mean over positives of log softmax, both directions."""
    image, text = _features(12)
    scale = 14.3
    logits = scale * image @ text.T
    expected = 0.0
    for matrix in (logits, logits.T):
        log_p = F.log_softmax(matrix, dim=1)
        for i in range(12):
            positives = [j for j in range(12) if GROUPS[j] == GROUPS[i]]
            expected += -sum(log_p[i, j] for j in positives) / len(positives) / 12
    ours = InfoNCELoss()(image, text, torch.tensor(scale), groups=GROUPS)
    torch.testing.assert_close(ours, torch.as_tensor(expected / 2), rtol=1e-6, atol=1e-6)


def test_group_builders():
    labels = torch.tensor([2, -1, 2, -1, 0])
    groups = label_groups(labels, index=torch.tensor([10, 11, 12, 13, 14]))
    assert groups.tolist() == [2, -12, 2, -14, 0]  # the unlabelled are their own, distinct, negative groups
    assert label_groups(labels).tolist() == [2, -2, 2, -4, 0]
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 320, 1125, 49407, 0], [49406, 320, 49407, 0, 0]])
    captions = caption_groups(tokens)
    assert captions[0] == captions[1] != captions[2] and bool((captions >= 0).all())


def test_groups_must_match_the_batch():
    with pytest.raises(ValueError, match="one value per pair"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8), 1.0, groups=torch.arange(3))


def _grouped_rank_fn(rank, world_size):
    image, text = _features(2 * 6, seed=1)
    rows = slice(rank * 6, (rank + 1) * 6)
    out = {}
    for local_loss in (False, True):  # one spawn for both: starting processes is the slow part
        loss_fn = InfoNCELoss(local_loss=local_loss, rank=rank, world_size=world_size)
        loss, gi, gt, gs = _loss_and_grads_grouped(loss_fn, image[rows], text[rows], 14.3, GROUPS[rows])
        out[local_loss] = {"loss": loss, "image_grad": gi, "text_grad": gt, "scale_grad": gs}
    return out


def test_groups_across_two_gloo_ranks_equal_one_rank_at_2b():
    """Positives on the other rank count: groups are gathered with the features (global and local loss)."""
    image, text = _features(12, seed=1)
    ref_loss, ref_gi, ref_gt, ref_gs = _loss_and_grads_grouped(InfoNCELoss(), image, text, 14.3, GROUPS)
    by_rank = run_distributed(_grouped_rank_fn, 2)
    for local_loss in (False, True):
        results = [r[local_loss] for r in by_rank]
        torch.testing.assert_close(sum(r["loss"] for r in results) / 2, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([r["image_grad"] for r in results]) / 2, ref_gi, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.cat([r["text_grad"] for r in results]) / 2, ref_gt, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sum(r["scale_grad"] for r in results) / 2, ref_gs, rtol=1e-5, atol=1e-7)
