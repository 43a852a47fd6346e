"""Seeds derived from integers, stable across processes and platforms, for data and model randomness.

Training data (:mod:`segloss.data.sampling`) and the model's own randomness (dropout, …;
:func:`reseed_step`) are pure functions of the run's seed and a position (epoch, index, step, rank), so a
resumed or re-sharded training draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
import random
from contextlib import contextmanager

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and platforms (not Python's ``hash``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_rngs(seed: int):
    """Seed python ``random``, numpy and torch (CPU) with ``seed`` inside the block; restore after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def reseed_step(batches_seen: int, rank: int) -> None:
    """In a seeded run (``PL_GLOBAL_SEED``, set by ``seed_everything``), seed torch's global RNG from
    (seed, batches seen, rank): the randomness of step ``k`` does not depend on what ran before it."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        torch.manual_seed(mix_seed(int(seed), batches_seen, rank))
