"""WebDataset loaders over the shards described by ``_info.json``.

``create_loader`` yields batches ``(images [B,3,H,W], targets [B] long, domain_idx [B] long)``.

How the data is divided
    Shards (never samples) are divided: first over distributed ranks (``wds.split_by_node``, which
    reads ``RANK``/``WORLD_SIZE`` or ``torch.distributed``), then over DataLoader workers
    (``wds.split_by_worker``). In evaluation the shard list is not shuffled or resampled and nothing is
    cut to equal length, so each shard is read by exactly one (rank, worker) and every sample is seen
    exactly once. The price is that ranks may get different numbers of batches: evaluate by summing
    correct/total counts over ranks (``all_reduce``), never by assuming equal batches. A (rank, worker)
    with no shard simply yields nothing; use at least ``world_size * num_workers`` shards to keep all busy.

Training
    Without ``resampled``, an epoch is one pass over the shards: the shard order is shuffled with a seed
    from ``(seed, epoch)`` (the same on every rank, so the division stays a partition), then samples go
    through a shuffle buffer seeded from ``(seed, epoch, rank, worker)``. Call
    ``loader.set_epoch(e)`` before each epoch; the epoch lives in shared memory so workers see it.
    Ranks can end an epoch with different batch counts; for DDP with few shards use
    ``resampled=True``: every (rank, worker) draws shards with replacement and yields exactly
    ``len(loader)`` batches per epoch in total, the same on every rank.

Domain-balanced batches (``domain_balanced=True``, with ``resampled``)
    CLIPood (like DomainBed) draws every batch evenly from the source domains: one endless loader per
    domain, zipped. Shards written domain by domain and read through a shuffle buffer give batches
    dominated by one domain instead. Here each kept domain gets its own resampled stream (its own shards,
    filtered to that domain, seeded per (seed, epoch, rank, worker, domain)), and each batch takes
    ``batch_size // n`` samples from every domain. The ``r = batch_size % n`` samples left over go to
    ``r`` domains in turn: batch ``t`` (counted per worker and epoch) gives one more to the domains at
    positions ``(t * r + j) % n`` for ``j < r`` (positions in ``_info.json``'s domain order), so every
    ``n`` consecutive batches hold exactly ``batch_size`` samples of each domain. Batches are laid out
    domain by domain. Each domain's shuffle buffer holds ``shuffle_buffer // n`` samples, so memory is
    that of one unbalanced stream. Streamed shards work the same way: only each domain's shard list differs.

Bad data
    A sample whose image does not decode, whose ``.cls`` is missing or out of range, whose ``.json`` is
    unreadable or names an unknown domain is skipped, logged (the first few) and counted in
    ``loader.skipped``; so are samples that a truncated or corrupt shard no longer holds (the shard
    yielded fewer samples than ``_info.json`` lists). With ``strict=True`` the first one raises
    :class:`DatasetError` naming the shard and the sample key. The counter lives in shared memory, so it
    includes what the workers skipped; read it after the epoch.

    What one sample may cost is capped before it is paid: a tar member larger than ``max_member_bytes``
    (its size is in its header) is never read, and an image of more than ``max_image_pixels`` (its size is
    in its header too) is never decoded; such samples are skipped and counted as ``too_large``.
    Data that cannot be used ends, never spins: after ``max(MIN_SKIP_RUN, samples in the split)``
    consecutive skipped samples without a usable one (every label out of range, every shard empty or
    unreadable) a loader process raises :class:`DatasetError`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import random
import re
import signal
import tarfile
import threading
import warnings
from functools import partial
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence

import torch
import webdataset as wds
from PIL import Image
from timm.data.readers.shared_count import SharedCount
from torch.utils.data import IterableDataset, default_collate

from ..errors import ConfigError, DatasetError
from .info import DatasetInfo, read_dataset_info
from .remote import DEFAULT_RETRY, RetryPolicy, is_remote, open_remote

_logger = logging.getLogger(__name__)

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
SKIP_REASONS = ("no_image", "bad_label", "bad_meta", "unknown_domain", "bad_image", "missing_from_shard", "too_large")
MAX_MEMBER_BYTES = 64 * 2**20  # one tar member (image, label, metadata) read into memory at most
MAX_IMAGE_PIXELS = 8192 * 8192  # decoded at most; PIL only warns below 2 x its own 89 MP limit
MIN_SKIP_RUN = 1000  # consecutive skipped samples before data is declared unusable (at least the split's size)
_TOO_LARGE = "__too_large__"  # suffix prefix marking a member that was not read
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as its tar reader does


class SkipCounter:
    """How many samples were skipped, per reason; shared with DataLoader workers through shared memory."""

    def __init__(self, log_limit: int = 20):
        self._counts = multiprocessing.Array("q", len(SKIP_REASONS))
        self.log_limit = log_limit

    def record(self, reason: str, message: str, n: int = 1) -> None:
        """Count ``n`` skipped samples; log the first ``log_limit`` events so a bad dataset cannot flood logs."""
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += n
            total = sum(self._counts)
        if total - n < self.log_limit:
            _logger.warning("skipped %s: %s", reason, message)
            if total >= self.log_limit:
                _logger.warning("further skipped samples are counted in loader.skipped, not logged")

    @property
    def total(self) -> int:
        return sum(self._counts)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(SKIP_REASONS, self._counts))

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


class BadSample(Exception):
    """A sample (or part of a shard) that cannot be used; turned into a skip or a DatasetError."""

    def __init__(self, reason: str, shard: str, key: Optional[str], detail: str, n: int = 1):
        super().__init__(f"{detail} (shard {shard}" + (f", sample key {key!r})" if key else ")"))
        self.reason, self.shard, self.key, self.n = reason, shard, key, n


@dataclasses.dataclass
class _SkipPolicy:
    """What to do with bad data: count it and continue, or raise :class:`DatasetError` when strict.

    Calling it is the webdataset handler of the sample stages; :meth:`shard_error` handles errors
    raised while reading a tar.
    """

    counter: SkipCounter
    strict: bool
    max_skip_run: int = MIN_SKIP_RUN
    _skip_run: int = 0  # this process's skipped samples since its last usable one

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, BadSample):
            if self.strict:
                raise DatasetError(f"bad sample: {exn}. Fix or re-convert the shard, or load with strict=False.")
            self.counter.record(exn.reason, str(exn), exn.n)
            self._skip_run += exn.n
            if self._skip_run >= self.max_skip_run:
                raise DatasetError(
                    f"{self._skip_run} samples in a row were skipped without a usable one (skipped so far: "
                    f"{ {k: v for k, v in self.counter.as_dict().items() if v} }; the last: {exn}): this data "
                    "cannot be used. Fix or re-convert the dataset (see the warnings above).")
            return True
        raise exn  # a bug, not bad data

    def usable(self, sample: Any) -> Any:
        """Pipeline stage after decoding: a usable sample ends the run of skipped ones."""
        self._skip_run = 0
        return sample

    def shard_error(self, url: str, exn: Exception) -> bool:
        if isinstance(exn, DatasetError):  # ours, raised deeper in webdataset's tar reader, seen again
            exn.args = exn.args[:1]  # webdataset appends the stream and url to args on the way out
            raise exn
        detail = exn.args[0] if exn.args else repr(exn)
        if self.strict:
            raise DatasetError(f"shard {url} is unreadable or truncated ({detail}). Re-convert or re-download it, "
                               f"or load with strict=False to skip what cannot be read.") from exn
        # The samples the shard loses are counted by _ReadShards when it ends.
        _logger.warning("error reading shard %s, going on with the next one: %s", url, detail)
        return True


class _ReadShards(wds.PipelineStage):
    """webdataset's ``tarfile_to_samples`` one shard at a time, so that a shard yielding fewer samples than
    ``_info.json`` lists (truncated, corrupt, unreadable) is noticed and counted, with its tar members capped
    in size (:func:`_capped_members`)."""

    def __init__(self, lengths: dict[str, int], policy: _SkipPolicy, max_member_bytes: int = MAX_MEMBER_BYTES,
                 remote: bool = False, retry: RetryPolicy = DEFAULT_RETRY):
        self.lengths, self.policy, self.max_member_bytes = lengths, policy, max_member_bytes
        self.remote, self.retry = remote, retry

    def run(self, shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for shard in shards:
            url, n = shard["url"], 0
            opener = partial(open_remote, url, self.retry) if self.remote else partial(open, url, "rb")
            for sample in _tar_samples(url, opener, partial(self.policy.shard_error, url), self.max_member_bytes):
                n += 1
                yield sample
            expected = self.lengths[url]
            if n < expected:
                self.policy(BadSample("missing_from_shard", url, None,
                                      f"{expected - n} of {expected} samples could not be read", n=expected - n))


def _tar_samples(url: str, opener: Callable[[], BinaryIO], handler: Callable[[Exception], bool],
                 max_member_bytes: int) -> Iterator[dict[str, Any]]:
    """webdataset's ``tarfile_samples`` for one shard, opened by ``opener``, members capped in size.

    ``tarfile_samples`` opens its url with ``gopen``, which runs a name starting with ``pipe:`` as a shell
    command; a shard named in ``_info.json`` is data, so it is opened here as a local file (``open``) or,
    for a remote dataset, as that URL (:func:`clipood_zoo.data.remote.open_remote`), never through ``gopen``.
    A remote shard that cannot be had (404, or the retries spent) raises :class:`DatasetError` naming it.
    """
    try:
        stream = opener()  # closed below, also when the consumer stops early
    except OSError as exn:
        handler(exn)  # raises when strict; otherwise the shard's samples are counted as missing
        return
    with stream:
        files = _capped_members(url, stream, handler, max_member_bytes)
        yield from wds.tariterators.group_by_keys(files, handler=handler)


def _capped_members(url: str, stream: BinaryIO, handler: Callable[[Exception], bool],
                    max_member_bytes: int) -> Iterator[dict[str, Any]]:
    """webdataset's ``tar_file_expander`` for one open shard, except that a member whose header gives more than
    ``max_member_bytes`` is not read (a sparse member can claim GiBs in a KB-sized shard): it becomes a
    ``__too_large__`` marker."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for member in tar:
            if not member.isreg() or _SKIP_META.match(member.name):
                continue
            if member.size > max_member_bytes:
                key, ext = wds.tariterators.base_plus_ext(member.name)
                note = f"tar member {member.name} is {member.size} bytes, over the limit of {max_member_bytes}"
                yield dict(fname=f"{key}.{_TOO_LARGE}.{ext}", data=note.encode(), __url__=url)
            else:
                yield dict(fname=member.name, data=tar.extractfile(member).read(), __url__=url)
            tar.members = []  # stream mode: keep no headers
    except DatasetError:  # a remote shard whose retries are spent: an outage, not a bad sample
        raise
    except Exception as exn:  # noqa: BLE001  truncated or corrupt tar: the handler counts or raises
        handler(exn)
    yield {}  # end of shard: group_by_keys emits the last sample


class _EpochShuffle(wds.PipelineStage):
    """A shuffle buffer whose seed is derived from (seed, epoch[, rank, worker]) at iteration time.

    ``per_worker=False`` gives every rank and worker the same order (needed for the shard list, so
    that splitting it afterwards is a partition); ``True`` decorrelates the sample streams.
    """

    def __init__(self, bufsize: int, seed: int, epoch: SharedCount, per_worker: bool, stream: str = ""):
        self.bufsize, self.seed, self.epoch, self.per_worker, self.stream = bufsize, seed, epoch, per_worker, stream

    def run(self, src: Iterator[Any]) -> Iterator[Any]:
        rng = _rng(self.seed, self.epoch, self.per_worker, self.stream)
        return wds.shuffle(self.bufsize, self.bufsize, rng=rng)(src)


class _ResampledShards(IterableDataset):
    """An endless stream of shards drawn with replacement, seeded per (seed, epoch, rank, worker[, stream])."""

    def __init__(self, urls: Sequence[str], seed: int, epoch: SharedCount, stream: str = ""):
        super().__init__()
        self.urls, self.seed, self.epoch, self.stream = list(urls), seed, epoch, stream

    def __iter__(self) -> Iterator[dict[str, str]]:
        rng = _rng(self.seed, self.epoch, per_worker=True, stream=self.stream)
        while True:
            yield dict(url=rng.choice(self.urls))


def _rng(seed: int, epoch: SharedCount, per_worker: bool, stream: str = "") -> random.Random:
    """``stream`` tells apart the per-domain streams of domain-balanced loading (empty otherwise)."""
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    parts = (seed, epoch.value) + ((rank, worker) if per_worker else ()) + ((stream,) if stream else ())
    return random.Random("-".join(map(str, parts)))  # str seeds are hashed with sha512: stable across runs


def balanced_counts(batch_size: int, num_domains: int, batch_index: int) -> list[int]:
    """Samples per domain in batch ``batch_index``: ``batch_size // n`` each, the remainder in turn.

    The ``r = batch_size % n`` extra samples go to positions ``(batch_index * r + j) % n``, ``j < r``, so
    any ``n`` consecutive batches give each domain exactly ``batch_size`` samples.
    """
    base, extra = divmod(batch_size, num_domains)
    counts = [base] * num_domains
    for j in range(extra):
        counts[(batch_index * extra + j) % num_domains] += 1
    return counts


class _BalancedBatches(IterableDataset):
    """Zip one endless sample stream per domain into batches with :func:`balanced_counts` samples of each."""

    def __init__(self, streams: Sequence[Any], batch_size: int):
        super().__init__()
        self.streams, self.batch_size = list(streams), batch_size

    def __iter__(self) -> Iterator[Any]:
        iterators = [iter(s) for s in self.streams]
        t = 0
        while True:
            counts = balanced_counts(self.batch_size, len(iterators), t)
            yield default_collate([next(it) for it, n in zip(iterators, counts) for _ in range(n)])
            t += 1


def _parse(sample: dict[str, Any], classes: Sequence[str], domain_index: dict[str, int]) -> dict[str, Any]:
    """Check the label, domain and image of a raw sample; keep the image undecoded (filters come first)."""
    shard, key = sample.get("__url__", "?"), sample.get("__key__")
    too_large = [sample[k].decode() for k in sample if k.startswith(_TOO_LARGE)]
    if too_large:
        raise BadSample("too_large", shard, key, f"{'; '.join(too_large)} (not read; raise max_member_bytes, "
                                                 "train.py's --max-member-bytes, to accept it)")
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        raise BadSample("no_image", shard, key, f"no image member ({'/'.join(IMAGE_KEYS)})")
    try:
        target = int(sample["cls"])
    except (KeyError, ValueError):
        raise BadSample("bad_label", shard, key, "missing or non-integer .cls") from None
    if not 0 <= target < len(classes):
        raise BadSample("bad_label", shard, key, f"class index {target} out of range [0, {len(classes)})")
    try:
        meta = json.loads(sample["json"])
        domain = meta["domain"]
    except (KeyError, TypeError, ValueError, RecursionError):
        raise BadSample("bad_meta", shard, key, "missing or unreadable .json, or no 'domain' in it") from None
    classname = meta.get("classname")
    if isinstance(classname, str) and classname != classes[target]:  # never a silent wrong label
        raise BadSample("bad_label", shard, key, f".cls {target} is {classes[target]!r} in _info.json but the sample's "
                                                 f".json says {classname!r}: the shard and _info.json disagree")
    if not isinstance(domain, str) or domain not in domain_index:
        raise BadSample("unknown_domain", shard, key, f"domain {domain!r} is not in _info.json's domains")
    return dict(__url__=shard, __key__=key, image=sample[image_key], target=target, domain=domain_index[domain])


def _keep(sample: dict[str, Any], domains: Optional[frozenset[int]], classes: Optional[frozenset[int]]) -> bool:
    return (domains is None or sample["domain"] in domains) and (classes is None or sample["target"] in classes)


def _decode(sample: dict[str, Any], class_map: Optional[dict[int, int]],
            max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, int, int]:
    """The RGB image (decoded only if its header's size is within ``max_pixels``), target and domain."""
    shard, key = sample["__url__"], sample["__key__"]
    size = None
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the cap below decides, as a skip
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(sample["image"]))
        with img:
            if img.width * img.height > max_pixels:
                size = img.size
            else:
                image = img.convert("RGB")
    except Image.DecompressionBombError as e:  # beyond PIL's own hard limit (Image.MAX_IMAGE_PIXELS x 2)
        raise BadSample("too_large", shard, key, f"image not decoded: {e}") from None
    except Exception as e:  # noqa: BLE001  PIL's decoders raise OSError, SyntaxError, ValueError, EOFError,
        # struct.error, IndexError ... on malformed bytes: all mean "does not decode"
        raise BadSample("bad_image", shard, key, f"image does not decode ({e})") from None
    if size is not None:
        raise BadSample("too_large", shard, key, f"image of {size[0]}x{size[1]} pixels is over the limit of "
                                                 f"{max_pixels} (not decoded; raise max_image_pixels, train.py's "
                                                 "--max-image-pixels, to accept it)")
    target = class_map[sample["target"]] if class_map is not None else sample["target"]
    return image, target, sample["domain"]


def _apply_transform(sample: tuple[Image.Image, int, int], transform: Callable[[Image.Image], Any]):
    image, target, domain = sample
    return transform(image), target, domain


class ShardLoader:
    """The loader ``create_loader`` returns: iterate it for batches; ``len()`` is batches per epoch.

    ``len()`` is exact with ``resampled=True``; otherwise it is ``num_samples / (world_size *
    batch_size)`` rounded as the batching rounds, an estimate for progress bars and schedulers because
    shards (and each worker's last partial batch) are not spread evenly. ``num_samples`` is exact: the
    samples of the filtered split over all ranks, from ``_info.json`` (see :func:`count_samples`).
    """

    def __init__(self, loader: wds.WebLoader, info: DatasetInfo, split: str, num_samples: int,
                 num_batches: int, skipped: SkipCounter, epoch: SharedCount):
        self.loader, self.dataset_info, self.split = loader, info, split
        self.num_samples, self.num_batches, self.skipped = num_samples, num_batches, skipped
        self._epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard and sample shuffling (and resampling) for ``epoch``; call before iterating it."""
        self._epoch.value = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return self.num_batches


def create_loader(
        data_dir: str | os.PathLike | DatasetInfo,
        split: str,
        *,
        transform: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        is_training: bool,
        domains: Optional[Sequence[str]] = None,
        classes: Optional[Sequence[int] | str] = None,
        relabel_classes: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        epoch: int = 0,
        resampled: bool = False,
        drop_last: Optional[bool] = None,
        pin_memory: bool = False,
        strict: bool = False,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        domain_balanced: bool = False,
        epoch_samples: Optional[int] = None,
        retry: RetryPolicy = DEFAULT_RETRY,
) -> ShardLoader:
    """A loader of ``(images, targets, domain_idx)`` batches from split ``split`` of ``data_dir``.

    Args:
        data_dir: the dataset folder, or its :class:`DatasetInfo` already read (so that ``_info.json`` is
            parsed once per run, not once per loader).
        transform: PIL RGB image -> tensor [3,H,W] (runs in the workers; must be picklable for spawn).
        domains: domain names to keep (None: all). ``domain_idx`` stays the index in ``_info.json``.
        classes: class indices to keep, or ``'base'``/``'new'``/``'all'`` (None: all).
        relabel_classes: number targets by their position in ``classes`` (so a head built over exactly
            those classes lines up, as CoOp's base-to-new evaluation does); by default targets keep the
            dataset's class indices.
        seed, epoch, resampled, shuffle_buffer: training only, see the module docstring.
        drop_last: drop each worker's last partial batch (default: ``is_training``).
        strict: raise :class:`DatasetError` on the first bad sample instead of skipping it.
        max_member_bytes, max_image_pixels: what one sample may cost; larger ones are skipped unread.
        domain_balanced: every batch drawn evenly from the kept domains (needs ``resampled``; see the
            module docstring).
        epoch_samples: samples per epoch over all ranks (needs ``resampled``; default: the split's count), as
            open_clip's ``--train-num-samples``: an epoch is a length of the endless stream, not a pass.
        retry: how hard to try a remote shard (:class:`clipood_zoo.data.remote.RetryPolicy`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0 or shuffle_buffer < 1:
        raise ConfigError(f"num_workers must be >= 0 and shuffle_buffer >= 1, got {num_workers}, {shuffle_buffer}.")
    if resampled and not is_training:
        raise ConfigError("resampled=True is for training; evaluation must see every sample exactly once.")
    if epoch_samples is not None and (not resampled or epoch_samples < 1):
        raise ConfigError(f"epoch_samples (--train-num-samples) must be >= 1 and needs resampled=True, got "
                          f"{epoch_samples} with resampled={resampled}.")
    if domain_balanced and not resampled:
        raise ConfigError("domain_balanced=True needs resampled=True: balanced batches come from one endless "
                          "stream per domain, not from one pass over the shards.")
    if relabel_classes and classes is None:
        raise ConfigError("relabel_classes=True needs classes (the subset whose positions become the targets).")
    drop_last = is_training if drop_last is None else drop_last
    info = data_dir if isinstance(data_dir, DatasetInfo) else read_dataset_info(data_dir, retry)
    domain_ids = info.domain_indices(domains)
    class_ids = info.class_indices(classes)
    num_samples = count_samples(info, split, domains, classes)
    shards = _shards(info, split, domain_ids)
    _, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not shards or num_samples == 0:
        raise DatasetError(f"split {split!r} of {info.path} has no samples in domains {domains} and classes "
                           f"{classes}; check the filters.")
    if is_training and not resampled and len(shards) < world_size * max(1, num_workers):
        _logger.warning("%d shard(s) for %d rank(s) x %d worker(s): some read nothing; write smaller shards or "
                        "use resampled=True", len(shards), world_size, max(1, num_workers))

    if max_member_bytes < 1 or max_image_pixels < 1:
        raise ConfigError(f"max_member_bytes and max_image_pixels must be >= 1, got {max_member_bytes}, "
                          f"{max_image_pixels}.")
    counter = SkipCounter()
    policy = _SkipPolicy(counter, strict, max_skip_run=max(MIN_SKIP_RUN, num_samples))
    shared_epoch = SharedCount(epoch)
    class_map = {c: i for i, c in enumerate(class_ids)} if relabel_classes else None
    sample_stages = partial(_sample_stages, info=info, split=split, policy=policy, is_training=is_training,
                            seed=seed, epoch=shared_epoch, class_ids=class_ids, class_map=class_map, transform=transform,
                            max_member_bytes=max_member_bytes, max_image_pixels=max_image_pixels, retry=retry)
    if resampled:
        per_rank = max(1, (epoch_samples or num_samples) // (world_size * batch_size))
        per_worker = math.ceil(per_rank / max(1, num_workers))
        num_batches = per_worker * max(1, num_workers)
    else:
        num_batches = (math.floor if drop_last else math.ceil)(num_samples / (world_size * batch_size))
    if domain_balanced:
        balanced = domain_ids if domain_ids is not None else list(range(len(info.domains)))
        streams = []
        for d in balanced:
            if count_samples(info, split, [info.domains[d]], classes) == 0:
                raise DatasetError(f"domain {info.domains[d]!r} has no samples in split {split!r} of {info.path} "
                                   f"(classes {classes}), so batches cannot be balanced over it; leave it out of the "
                                   f"domains or turn domain balancing off.")
            stream = f"domain{d}"
            streams.append(wds.DataPipeline(_ResampledShards(_shards(info, split, [d]), seed, shared_epoch, stream),
                                            *sample_stages(domain_ids=[d], stream=stream,
                                                           shuffle_buffer=max(1, shuffle_buffer // len(balanced)))))
        pipeline = wds.DataPipeline(_BalancedBatches(streams, batch_size))
    else:
        if resampled:
            stages: list[Any] = [_ResampledShards(shards, seed, shared_epoch)]
        else:
            stages = [wds.SimpleShardList(shards)]
            if is_training:
                stages.append(_EpochShuffle(len(shards), seed, shared_epoch, per_worker=False))
            stages += [wds.split_by_node, wds.split_by_worker]
        stages += sample_stages(domain_ids=domain_ids, shuffle_buffer=shuffle_buffer)
        stages.append(wds.batched(batch_size, collation_fn=default_collate, partial=not drop_last))
        pipeline = wds.DataPipeline(*stages)
    if resampled:
        pipeline = pipeline.with_epoch(nbatches=per_worker)
    loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers,
                           pin_memory=pin_memory, worker_init_fn=leave_stop_signals_to_the_main_process)
    return ShardLoader(loader, info, split, num_samples, num_batches, counter, shared_epoch)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker leaves SIGINT and SIGTERM to the main process, except the SIGTERM that process sends it.

    A scheduler's SIGTERM (SLURM's, systemd's, ``kill -- -PGID``) and a terminal's Ctrl-C reach every process of the
    job, loader workers included, and torch's workers die of SIGTERM at once: the main process, still writing its
    stop checkpoint, then fails on the dead worker ("DataLoader worker ... is killed by signal: Terminated"). So a
    worker ignores SIGINT and every SIGTERM but its main process's: torch and multiprocessing stop workers with
    SIGTERM (``terminate()``), and ignoring that one would hang the main process's exit. A thread of the worker
    waits for SIGTERM (blocked, so that it is only ever received there) and reads who sent it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no way to read a sender (macOS, Windows): keep torch's SIGTERM
        return
    # blocked first (a job-wide SIGTERM arriving now waits for the thread), before any other thread of the worker
    # exists, so every thread inherits the block; then the default action, not a handler inherited from the main
    # process (which a forked worker would run and survive)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_obey_sigterm_from, args=(os.getppid(),), name="sigterm-from-main", daemon=True).start()


def _obey_sigterm_from(main_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
        pass  # another process's: the main process stops the run, then its workers
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # this thread alone: the one the next one reaches
    os.kill(os.getpid(), signal.SIGTERM)  # the worker dies of it, as terminate() means


def _sample_stages(*, info: DatasetInfo, split: str, policy: _SkipPolicy, is_training: bool, seed: int,
                   epoch: SharedCount, shuffle_buffer: int, domain_ids: Optional[Sequence[int]],
                   class_ids: Optional[Sequence[int]], class_map: Optional[dict[int, int]],
                   transform: Callable[[Image.Image], Any], max_member_bytes: int, max_image_pixels: int,
                   retry: RetryPolicy, stream: str = "") -> list[Any]:
    """Shard urls -> checked, filtered, decoded and transformed ``(image, target, domain)`` samples."""
    stages: list[Any] = [_ReadShards({s: n for s, n in zip(info.shard_paths(split), info.split(split).shard_lengths)},
                                     policy, max_member_bytes, remote=is_remote(info.root), retry=retry)]
    if is_training:
        stages.append(_EpochShuffle(shuffle_buffer, seed, epoch, per_worker=True, stream=stream))
    return stages + [
        wds.map(partial(_parse, classes=info.classes,
                        domain_index={d: i for i, d in enumerate(info.domains)}), handler=policy),
        wds.select(partial(_keep, domains=None if domain_ids is None else frozenset(domain_ids),
                           classes=None if class_ids is None else frozenset(class_ids))),
        wds.map(partial(_decode, class_map=class_map, max_pixels=max_image_pixels), handler=policy),
        wds.map(policy.usable),
        wds.map(partial(_apply_transform, transform=transform)),
    ]


def _shards(info: DatasetInfo, split: str, domain_ids: Optional[Sequence[int]]) -> list[str]:
    """The split's shard paths, without those that ``_info.json`` says hold none of the wanted domains."""
    s = info.split(split)
    paths = info.shard_paths(split)
    if domain_ids is None or s.shard_domains is None:
        return paths
    return [p for p, held in zip(paths, s.shard_domains) if set(held) & set(domain_ids)]


def count_samples(data_dir: str | os.PathLike | DatasetInfo, split: str, domains: Optional[Sequence[str]] = None,
                  classes: Optional[Sequence[int] | str] = None) -> int:
    """Samples of ``split`` in the given domains (names) and classes (indices or 'base'/'new'/'all').

    Taken from ``_info.json``: ``num_samples`` unfiltered, the per-domain/class counts our writer
    records otherwise. For shards written without those counts, the shards' ``.cls``/``.json`` members
    are read (tar headers let the images be skipped without reading them). Samples whose image turns
    out not to decode are included here; the loader skips and counts them.
    """
    info = data_dir if isinstance(data_dir, DatasetInfo) else read_dataset_info(data_dir)
    domain_ids, class_ids = info.domain_indices(domains), info.class_indices(classes)
    n = info.count(split, domain_ids, class_ids)
    if n is None:
        s = dataclasses.replace(info.split(split), domain_class_counts=_scan_counts(info, split))
        n = dataclasses.replace(info, splits={**info.splits, split: s}).count(split, domain_ids, class_ids)
    return n


def _scan_counts(info: DatasetInfo, split: str) -> tuple[tuple[int, ...], ...]:
    """[domain][class] counts of the samples in ``split`` with a valid label and a known domain."""
    counts = [[0] * len(info.classes) for _ in info.domains]
    domain_index = {d: i for i, d in enumerate(info.domains)}
    for path in info.shard_paths(split):
        members: dict[str, dict[str, bytes]] = {}
        try:
            with (open_remote(path) if is_remote(info.root) else open(path, "rb")) as f, \
                    tarfile.open(fileobj=f, mode="r:" if f.seekable() else "r|") as tar:
                for m in tar:
                    key, _, ext = m.name.rpartition("/")[2].partition(".")
                    if ext in ("cls", "json") and m.isreg():
                        members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError) as e:
            _logger.warning("counting %s stopped early: %r", path, e)
        for key, m in members.items():
            try:
                c, d = int(m["cls"]), domain_index[json.loads(m["json"])["domain"]]
            except (KeyError, TypeError, ValueError):
                continue
            if 0 <= c < len(info.classes):
                counts[d][c] += 1
    return tuple(map(tuple, counts))
