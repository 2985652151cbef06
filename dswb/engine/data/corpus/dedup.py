"""Deduplication of documents, as DeepSeek did before training: exact by content hash, near by MinHash/LSH.

- Exact: a document is a duplicate when the 64-bit BLAKE2b hash of its (cleaned) UTF-8 text was
  seen before; the first occurrence in corpus order is kept. 64-bit hashes collide with
  probability ~n^2 / 2^65 (one chance in ~40,000 at 10^7 documents).
- Near (optional): MinHash signatures over word 5-gram shingles (lower-cased `\\w+` words),
  cut into `bands` bands of `rows` rows (Broder 1997; Leskovec et al., *Mining of Massive
  Datasets*, ch. 3). A document whose band keys meet a band key of a document already kept is a
  near-duplicate (an LSH candidate; no pairwise Jaccard check, as in common pretraining
  pipelines). `lsh_params` picks bands x rows for a Jaccard threshold, minimising the sum of the
  false-positive and false-negative areas under the S-curve (the datasketch method).

Seen keys live in `HashSet64`: sorted numpy runs merged like a log-structured tree, 8 bytes per
key (no Python object per document), with vectorized membership tests. Pure numpy; no torch.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import regex

WORD = regex.compile(r"\w+")
MERSENNE_61 = np.uint64((1 << 61) - 1)
MAX_HASH_32 = np.uint64(0xFFFFFFFF)
SHINGLE = 5
_SHINGLE_BLOCK = 4096
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz


def content_hash(text: str) -> int:
    """64-bit BLAKE2b of the text's UTF-8 bytes, as an unsigned int."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def content_hashes(texts: list[str]) -> np.ndarray:
    """`content_hash` of each text, as a uint64 array."""
    return np.fromiter((content_hash(t) for t in texts), dtype=np.uint64, count=len(texts))


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a key appears for the first time in `keys` (in order)."""
    mask = np.zeros(len(keys), dtype=bool)
    if len(keys):
        mask[np.unique(keys, return_index=True)[1]] = True
    return mask


class HashSet64:
    """A set of uint64 keys as sorted runs whose sizes at least halve from one run to the next
    (so there are O(log n) runs); 8 bytes per key."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `keys` are in the set."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, keys)
            inside = pos < len(run)
            found[inside] |= run[pos[inside]] == keys[inside]
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add keys (duplicates among them or with the set are harmless)."""
        keys = np.unique(np.asarray(keys, dtype=np.uint64))
        if not len(keys):
            return
        self.runs.append(keys)
        while len(self.runs) > 1 and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
            top = self.runs.pop()
            self.runs[-1] = np.union1d(self.runs[-1], top)


# -- MinHash / LSH ---------------------------------------------------------------------------

def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted error areas around
    `threshold` of the LSH S-curve `1 - (1 - s^rows)^bands`."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp_s = np.linspace(0.0, threshold, 201)
            fn_s = np.linspace(threshold, 1.0, 201)
            fp = _trapezoid(1 - (1 - fp_s ** rows) ** bands, fp_s)
            fn = _trapezoid((1 - fn_s ** rows) ** bands, fn_s)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the `num_perm` hash functions `(a * x + b) mod (2^61 - 1)`, seeded.

    `a < 2^31` and `x < 2^32` keep `a * x + b` inside 64 bits.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, size: int = SHINGLE) -> np.ndarray:
    """32-bit hashes of the word `size`-grams of `text` (lower-cased `\\w+` words)."""
    words = WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    size = min(size, len(h))
    n = len(h) - size + 1
    out = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            out = out * np.uint64(1_000_003) + h[k:k + n]
    return (out >> np.uint64(32)) ^ (out & MAX_HASH_32)


def minhash(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature (len(a) uint32 values) of a set of 32-bit shingle hashes."""
    sig = np.full(len(a), MAX_HASH_32, dtype=np.uint64)
    for start in range(0, len(shingles), _SHINGLE_BLOCK):
        x = shingles[start:start + _SHINGLE_BLOCK]
        values = (a[:, None] * x[None, :] + b[:, None]) % MERSENNE_61
        np.minimum(sig, (values & MAX_HASH_32).min(axis=1), out=sig)
    return sig.astype(np.uint32)


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per band: a hash of the band's index and its `rows` signature values."""
    keys = np.empty(bands, dtype=np.uint64)
    for i in range(bands):
        chunk = signature[i * rows:(i + 1) * rows].tobytes()
        digest = hashlib.blake2b(chunk, digest_size=8, person=i.to_bytes(2, "little") + b"dswb").digest()
        keys[i] = int.from_bytes(digest, "little")
    return keys


class NearDup:
    """MinHash/LSH band keys of documents, for a Jaccard `threshold` with `num_perm` hashes."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.a, self.b = permutations(num_perm)

    def keys(self, text: str) -> np.ndarray:
        return band_keys(minhash(shingle_hashes(text), self.a, self.b), self.bands, self.rows)


def near_duplicates(band_rows: np.ndarray, seen: HashSet64, candidates: np.ndarray) -> np.ndarray:
    """Which `candidates` (row mask over `band_rows`, in corpus order) share a band key with a
    document in `seen` or with an earlier candidate that is kept; adds the kept ones to `seen`."""
    dup = np.zeros(len(band_rows), dtype=bool)
    rows = np.flatnonzero(candidates)
    if not len(rows):
        return dup
    dup[rows] = seen.contains(band_rows[rows].ravel()).reshape(len(rows), -1).any(axis=1)
    local: set[int] = set()
    for r in rows.tolist():
        if dup[r]:
            continue
        keys = band_rows[r].tolist()
        if local.intersection(keys):
            dup[r] = True
        else:
            local.update(keys)
    seen.add(band_rows[candidates & ~dup].ravel())
    return dup
