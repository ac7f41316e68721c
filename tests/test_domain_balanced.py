"""Domain-balanced training batches: exact per-batch domain counts, resume/DDP safety, train.py's default."""
from collections import Counter

import pytest
from torchvision.transforms.functional import pil_to_tensor

import train
from clipood_zoo.data.pipeline import balanced_counts, create_loader
from clipood_zoo.data.synthetic import decode_color, write_synthetic_dataset
from clipood_zoo.errors import ConfigError
from tests.conftest import train_args

DOMAINS = ("art", "photo", "sketch")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Written domain by domain (each shard holds one domain), the layout that unbalances a shuffle buffer."""
    root = tmp_path_factory.mktemp("balanced")
    write_synthetic_dataset(root, DOMAINS, per_class=8, shard_size=6)
    return root


def _domain_counts(loader, epoch=0):
    """Per-batch Counter of domain index, read from the pixels (not from the loader's own domain field)."""
    loader.set_epoch(epoch)
    out = []
    for images, targets, domains in loader:
        decoded = [decode_color(image[:, 0, 0].tolist()) for image in images]
        assert [t for t, _ in decoded] == targets.tolist() and [d for _, d in decoded] == domains.tolist()
        out.append(Counter(d for _, d in decoded))
    return out


def _load(data_dir, **kw):
    kw = {"batch_size": 6, "is_training": True, "resampled": True, "domain_balanced": True, "seed": 1, **kw}
    return create_loader(data_dir, "train", transform=pil_to_tensor, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_batch_has_the_same_count_of_each_domain(data_dir, workers):
    loader = _load(data_dir, num_workers=workers)
    for epoch in range(3):
        batches = _domain_counts(loader, epoch)
        assert len(batches) == len(loader) == 16  # 96 samples // 6, as without balancing
        assert all(b == {0: 2, 1: 2, 2: 2} for b in batches)


def test_remainder_rotates_so_every_n_batches_are_exactly_balanced(data_dir):
    loader = _load(data_dir, batch_size=5, domains=["art", "photo", "sketch"])  # 5 = 3 * 1 + 2
    batches = _domain_counts(loader)
    assert all(sum(b.values()) == 5 and sorted(b.values()) == [1, 2, 2] for b in batches)
    for start in range(0, len(batches) - 2, 3):
        assert sum(batches[start:start + 3], Counter()) == {0: 5, 1: 5, 2: 5}
    # independent statement of the rule: batch t gives the 2 extras to positions 2t, 2t+1 (mod 3)
    assert [balanced_counts(5, 3, t) for t in range(3)] == [[2, 2, 1], [2, 1, 2], [1, 2, 2]]


def test_only_kept_domains_and_classes_are_drawn(data_dir):
    loader = _load(data_dir, domains=["art", "sketch"], classes="base", batch_size=4)
    loader.set_epoch(0)
    for images, targets, domains in loader:
        assert Counter(domains.tolist()) == {0: 2, 2: 2}
        assert set(targets.tolist()) <= set(loader.dataset_info.base_classes)


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ(data_dir):
    def stream(epoch):
        loader = _load(data_dir)
        loader.set_epoch(epoch)
        return [t.tolist() + d.tolist() for _, t, d in loader]

    assert stream(0) == stream(0)
    assert stream(0) != stream(1)


def test_ranks_draw_different_samples(data_dir, monkeypatch):
    def first_batches(rank):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = _load(data_dir)
        loader.set_epoch(0)
        return len(loader), [images[:, :, 0, 0].tolist() for images, _, _ in loader]

    (n0, b0), (n1, b1) = first_batches(0), first_batches(1)
    assert n0 == n1 == len(b0) == len(b1) == 8  # 96 // (2 * 6): the same count on every rank
    assert b0 != b1


def test_balancing_needs_resampling(data_dir):
    with pytest.raises(ConfigError, match="domain_balanced=True needs resampled=True"):
        _load(data_dir, resampled=False)


def _train_batches(data_dir, tmp_path, *flags, n=12):
    args = train.build_parser().parse_args(train_args(data_dir, tmp_path, "-b", "4", *flags))
    run = train.Run(args, train.read_dataset_info(args.data_dir), tmp_path / "run", train.StopSignals())
    run.train_loader.set_epoch(0)
    return [Counter(d.tolist()) for _, (_, _, d) in zip(range(n), run.train_loader)]


def test_train_py_balances_by_default_and_can_be_turned_off(data_dir, tmp_path):
    # train_args holds out 'sketch': sources art (0) and photo (1), 2 + 2 per batch of 4
    assert all(b == {0: 2, 1: 2} for b in _train_batches(data_dir, tmp_path))
    assert any(b != {0: 2, 1: 2} for b in _train_batches(data_dir, tmp_path, "--no-domain-balanced"))
