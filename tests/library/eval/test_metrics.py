"""The torchmetrics wrappers equal the plain functions, in one process and gathered over two gloo ranks."""

import math

import pytest
import torch

from lightning_sarclip.eval import classification_metrics, recall_at_k
from lightning_sarclip.eval.metrics import RetrievalRecall, ZeroShotAccuracy, first_occurrences
from tests.distributed import run_distributed

N, K, D, C = 23, 3, 16, 7


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    """Noisy paired features (recall strictly between 0 and 1), logits and labels with some unlabelled (-1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, D, generator=g)
    texts = images[:, None, :] + 1.5 * torch.randn(N, K, D, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    labels[::5] = -1
    logits = torch.randn(N, C, generator=g) + 2.0 * torch.nn.functional.one_hot(labels.clamp(min=0), C)
    return {"images": images, "texts": texts, "labels": labels, "logits": logits}


def _reference(data: dict[str, torch.Tensor], ks=(1, 5, 10), topk=(1, 3, 5)) -> tuple[dict, dict]:
    retrieval = recall_at_k(data["images"], data["texts"].flatten(0, 1), torch.arange(N).repeat_interleave(K), ks)
    labelled = data["labels"] >= 0
    zeroshot = classification_metrics(data["logits"][labelled], data["labels"][labelled], topk)
    return retrieval, zeroshot


def _shard(rank: int, world_size: int) -> list[int]:
    """What a DistributedSampler(shuffle=False) gives ``rank``: strided, padded by repeating the first indices."""
    per_rank = math.ceil(N / world_size)
    padded = list(range(N)) + list(range(per_rank * world_size - N))
    return padded[rank::world_size]


def test_first_occurrences_sorts_and_drops_repeats():
    index = torch.tensor([4, 0, 2, 4, 1, 0, 3])
    keep = first_occurrences(index)
    assert index[keep].tolist() == [0, 1, 2, 3, 4]
    assert keep.tolist() == [1, 4, 2, 6, 0]  # the first copy of 0 and 4 is kept
    assert first_occurrences(torch.zeros(0, dtype=torch.long)).numel() == 0


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7])
def test_single_process_equals_plain_functions(chunk_size):
    data = _data()
    expected_retrieval, expected_zeroshot = _reference(data)
    assert 0.0 < expected_retrieval["i2t_R@1"] < 1.0 and 0.0 < expected_retrieval["t2i_R@1"] < 1.0
    recall, zeroshot = RetrievalRecall(chunk_size=chunk_size), ZeroShotAccuracy()
    # Uneven batches, flat (B*K, D) and (B, K, D) captions, a duplicated sample, batches out of order.
    for lo, hi, flat in ((10, 23, True), (0, 4, False), (4, 10, True), (0, 2, False)):
        text = data["texts"][lo:hi]
        recall.update(data["images"][lo:hi], text.flatten(0, 1) if flat else text, torch.arange(lo, hi))
        zeroshot.update(data["logits"][lo:hi], data["labels"][lo:hi], torch.arange(lo, hi))
    assert recall.compute() == expected_retrieval
    assert recall.num_images == N and recall.captions_per_image == K
    assert zeroshot.compute() == expected_zeroshot
    assert zeroshot.num_samples == int((data["labels"] >= 0).sum())


def test_single_caption_and_k_beyond_classes():
    data = _data(1)
    recall = RetrievalRecall(ks=(1, 2))
    recall.update(data["images"], data["texts"][:, 0], torch.arange(N))
    assert recall.compute() == recall_at_k(data["images"], data["texts"][:, 0], torch.arange(N), ks=(1, 2))
    zeroshot = ZeroShotAccuracy(topk=(1, 10))
    zeroshot.update(data["logits"], data["labels"], torch.arange(N))
    out = zeroshot.compute()
    assert math.isnan(out["top10"]) and out["top1"] > 0  # CLIP_benchmark's NaN for K > classes


def test_unlabelled_only_gives_no_zeroshot_metrics():
    zeroshot = ZeroShotAccuracy()
    zeroshot.update(torch.randn(3, 4), torch.full((3,), -1), torch.arange(3))
    assert zeroshot.compute() == {} and zeroshot.num_samples == 0


def test_update_validation():
    recall = RetrievalRecall()
    with pytest.raises(ValueError, match="B \\* K rows"):
        recall.update(torch.randn(4, D), torch.randn(9, D), torch.arange(4))
    with pytest.raises(ValueError, match="index must have shape"):
        recall.update(torch.randn(4, D), torch.randn(4, D), torch.arange(3))
    recall.update(torch.randn(2, D), torch.randn(2, 3, D), torch.arange(2))
    with pytest.raises(ValueError, match="captions per image changed"):
        recall.update(torch.randn(2, D), torch.randn(2, 2, D), torch.arange(2, 4))
    with pytest.raises(ValueError, match="before any update"):
        RetrievalRecall().compute()
    zeroshot = ZeroShotAccuracy()
    zeroshot.update(torch.randn(2, C), torch.tensor([0, 1]), torch.arange(2))
    with pytest.raises(ValueError, match="number of classes changed"):
        zeroshot.update(torch.randn(2, C + 1), torch.tensor([0, 1]), torch.arange(2))
    with pytest.raises(ValueError, match="integer"):
        zeroshot.update(torch.randn(2, C), torch.tensor([0.0, 1.0]), torch.arange(2))


def _ranks_compute(rank: int, world_size: int, chunk_size: int | None) -> dict:
    data = _data()
    shard = torch.tensor(_shard(rank, world_size))
    recall, zeroshot = RetrievalRecall(chunk_size=chunk_size), ZeroShotAccuracy()
    for part in shard.split(5):  # several updates per rank, the last one short
        recall.update(data["images"][part], data["texts"][part].flatten(0, 1), part)
        zeroshot.update(data["logits"][part], data["labels"][part], part)
    return {"retrieval": recall.compute(), "zeroshot": zeroshot.compute(), "n": recall.num_images}


def test_two_gloo_ranks_with_sampler_padding_equal_one_process():
    # 23 samples over 2 ranks: rank 1 ends with a padded repeat of sample 0.
    assert _shard(1, 2)[-1] == 0 and len(_shard(0, 2)) == len(_shard(1, 2)) == 12
    expected_retrieval, expected_zeroshot = _reference(_data())
    for result in run_distributed(_ranks_compute, 2, (7,)):
        assert result["n"] == N
        assert result["retrieval"] == expected_retrieval  # exact: no division by world size, no duplicates
        assert result["zeroshot"] == expected_zeroshot
