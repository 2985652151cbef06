"""The sample store: memory-mapped views across shards, loss masks, atomic writes, damage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dswb.config.schema import BatchingConfig
from dswb.engine.data.batches.loader import BatchStream
from dswb.engine.data.corpus.store import open_store
from dswb.engine.data.corpus.store_views import SampleView
from tests.helpers import write_samples


def samples_and_masks(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 50, (n,), generator=g).tolist()
    samples = [torch.randint(0, 70000 if seed else 500, (k,), generator=g).tolist() for k in lengths]
    masks = [(torch.rand(k, generator=g) > 0.3).long().tolist() for k in lengths]
    return samples, masks


def test_views_read_every_sample_back_across_shards(tmp_path):
    samples, _ = samples_and_masks()
    store = write_samples(tmp_path / "s", {"train": samples[:120], "val": samples[120:]}, shard_tokens=300)
    assert len(store.shards) > 5
    train, val = store.split("train"), store.split("val")
    assert isinstance(train, SampleView) and train.tolist() == samples[:120] and val.tolist() == samples[120:]
    assert train.lengths.tolist() == [len(s) for s in samples[:120]] and train.lengths.dtype == np.int32
    assert train[-1].tolist() == samples[119] and train[5].dtype == np.uint16
    assert train[10:20].tolist() == samples[10:20] and train[::7].tolist() == samples[:120:7]
    with pytest.raises(IndexError):
        train[120]
    with pytest.raises(ValueError):
        train[0][0] = 1  # read-only
    assert train.masks is None
    big = write_samples(tmp_path / "big", {"train": samples_and_masks(seed=1)[0]})
    assert big.split("train")[0].dtype == np.int32  # ids past 65535


def _mapped_kib(name: str) -> int:
    """Resident KiB of this process's memory maps of files whose name contains `name`."""
    kib, current = 0, ""
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                current = parts[5] if len(parts) > 5 else ""
            elif parts and parts[0] == "Rss:" and name in current:
                kib += int(parts[1])
    return kib


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_reading_samples_maps_no_token_file_into_the_process(tmp_path):
    """Samples are read with pread: a mapped read would bring whole page-cache folios (up to 2 MB)
    into the process for each sample of a batch, so RSS would grow with the corpus."""
    samples, masks = samples_and_masks(n=400)
    store = write_samples(tmp_path / "s", {"train": list(zip(samples, masks))}, masks=True, shard_tokens=2000)
    train = store.split("train")
    batch = train.take(list(range(0, 400, 3)))
    mask_batch = train.masks.take(list(range(0, 400, 3)))
    assert [b.tolist() for b in batch] == samples[0:400:3] and [m.tolist() for m in mask_batch] == masks[0:400:3]
    assert _mapped_kib(".tokens.npy") == 0 and _mapped_kib(".masks.npy") == 0
    assert _mapped_kib(".offsets.npy") > 0   # offsets stay memory-mapped


def test_masks_stream_like_lists_in_padded_and_packed_batches(tmp_path):
    samples, masks = samples_and_masks()
    store = write_samples(tmp_path / "s", {"train": zip(samples, masks)}, masks=True, shard_tokens=500)
    view = store.split("train")
    assert view.masks[3].tolist() == masks[3] and len(view.masks) == len(samples)
    for mode in ("bucket", "pack"):
        cfg = BatchingConfig(max_tokens=256, mode=mode, megabatch=4, oversize="split" if mode == "pack" else "truncate")
        from_lists = BatchStream(samples, cfg, pad_id=0, max_len=64, seed=1, loss_masks=masks)
        from_store = BatchStream(view, cfg, pad_id=0, max_len=64, seed=1, loss_masks=view.masks)
        for _ in range(12):
            a, b = next(from_lists), next(from_store)
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert a.n_target == b.n_target


def test_mask_lengths_are_checked(tmp_path):
    with pytest.raises(ValueError, match="a loss mask of 3 values"):
        write_samples(tmp_path / "s", {"train": [([1, 2, 3], [1, 0])]}, masks=True)
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def test_a_damaged_store_is_a_miss_and_removed(tmp_path):
    store = write_samples(tmp_path / "s", {"train": [[1, 2, 3], [4, 5]], "val": [[6]]})
    assert open_store(store.path).split("val").tolist() == [[6]]
    (store.path / "s00000.offsets.npy").write_bytes(b"garbage")
    assert open_store(store.path) is None and not store.path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
