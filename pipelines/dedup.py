"""The near-duplicate cap: at most ``max_per_bucket`` samples per perceptual hash in an output.

Every sample's json carries the 64-bit perceptual hash of its object (``operators.quality.perceptual_hash``:
the pasted entity, the filmed object). A bucket is led by the first hash seen; a later hash joins the
nearest leader within ``max_distance`` differing bits (found through 5 exact-match bands: by pigeonhole,
hashes within 4 bits share one), else leads a new bucket. One counter actor per run, seeded with the
hashes already committed to the output, admits each sample as the writer reaches it, so the cap holds
across write tasks and across incremental runs; which members of a full bucket are kept depends on the
order the writer sees them.
"""

from __future__ import annotations

from collections import Counter

from pydantic import Field

from ..dataset import read_manifest
from ..operators.params import Params


_BANDS = [(0, 13), (13, 26), (26, 39), (39, 52), (52, 64)]


class DedupParams(Params):
    max_per_bucket: int | None = Field(
        None, ge=1, description="samples per perceptual-hash bucket in the output, at most; the excess is rejected near_duplicate (null: no cap)"
    )
    max_distance: int = Field(4, ge=0, le=4, description="differing bits (of 64) within which two hashes share a bucket")


class BucketCounter:
    """Samples per bucket of near-equal hashes; run as a Ray actor (``start_counter``)."""

    def __init__(self, params: DedupParams, committed: list[str] = ()):
        self.cap, self.distance = params.max_per_bucket, params.max_distance
        self.counts: Counter[int] = Counter()  # bucket leader -> samples
        self.bands: list[dict[int, list[int]]] = [{} for _ in _BANDS]  # band value -> leaders
        for phash in committed:
            self.counts[self._bucket(int(phash, 16))] += 1

    def _bucket(self, value: int) -> int:
        """The leader of `value`'s bucket (itself when no leader is near: it then leads a new one)."""
        keys = [(value >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in _BANDS]
        near = {leader for band, key in zip(self.bands, keys) for leader in band.get(key, ())}
        found = min(((bin(value ^ leader).count("1"), leader) for leader in near), default=None)
        if found is not None and found[0] <= self.distance:
            return found[1]
        for band, key in zip(self.bands, keys):
            band.setdefault(key, []).append(value)
        return value

    def admit(self, phashes: list[str | None]) -> list[bool]:
        """Whether each sample may be written (a sample without a hash always may); counts those that may."""
        admitted = []
        for phash in phashes:
            bucket = None if phash is None else self._bucket(int(phash, 16))
            ok = bucket is None or self.counts[bucket] < self.cap
            if ok and bucket is not None:
                self.counts[bucket] += 1
            admitted.append(ok)
        return admitted


def start_counter(output: str, params: DedupParams):
    """The run's counter actor seeded from the output's committed samples, or None when there is no cap."""
    if params.max_per_bucket is None:
        return None
    import ray

    committed = [h for hashes in read_manifest(output, ["phashes"])["phashes"].to_pylist() for h in hashes or () if h]
    return ray.remote(num_cpus=0)(BucketCounter).remote(params, committed)
