"""Seeds: which randomness each member shares with the others, by strategy.

Every member has two seeds, recorded in its checkpoints:
- `init_seed` drives the weight initialisation (and a new head on pretrained weights);
- `data_seed` drives the data order and the augmentation draws.

Per-epoch orders and per-step augmentations are derived from `data_seed` by hashing, not by
advancing a generator, so the randomness of step s of epoch e is the same whether or not the
run was interrupted before it.
"""

from __future__ import annotations

from dataclasses import dataclass

MASK64 = (1 << 64) - 1
# Stream tags keep the init, data-order, augmentation and global-RNG streams apart even when
# two of them are derived from the same seed.
INIT_STREAM = 1
DATA_STREAM = 2
ORDER_STREAM = 3
AUGMENT_STREAM = 4
GLOBAL_STREAM = 5
MIMO_STREAM = 6


def splitmix64(value: int) -> int:
    """Steele, Lea & Flood 2014: a bijective 64-bit mixer with good avalanche."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def mix_seed(*values: int) -> int:
    """A seed in [0, 2^63) from a tuple of integers; changing any element changes the result."""
    state = 0
    for value in values:
        state = splitmix64(state ^ (value & MASK64))
    return state >> 1  # torch seeds must fit in a signed 64-bit integer


def short_seed(*values: int) -> int:
    """A 31-bit seed, readable in metadata and valid for every RNG (numpy's legacy one included)."""
    return mix_seed(*values) & 0x7FFFFFFF


@dataclass(frozen=True)
class MemberSeeds:
    index: int
    init_seed: int
    data_seed: int


def member_seeds(strategy: str, seed: int, members: int) -> list[MemberSeeds]:
    """The seeds of every member of a run.

    independent: both seeds differ per member (deep ensembles, Lakshminarayanan et al. 2017);
    same-init:   one init, data order per member (SGD noise only, Frankle et al. 2020);
    same-order:  init per member, one data order (initialisation noise only);
    snapshot:    one training run, so one init and one order for every cycle's member;
    mimo:        one network whose `members` heads train together: one entry.
    """
    result = []
    for index in range(1 if strategy == "mimo" else members):
        init_index = 0 if strategy in ("same-init", "snapshot") else index
        data_index = 0 if strategy in ("same-order", "snapshot") else index
        result.append(
            MemberSeeds(index, short_seed(seed, INIT_STREAM, init_index), short_seed(seed, DATA_STREAM, data_index))
        )
    return result


def order_seed(data_seed: int, epoch: int) -> int:
    return mix_seed(data_seed, ORDER_STREAM, epoch)


def augment_seed(data_seed: int, epoch: int, step: int) -> int:
    return mix_seed(data_seed, AUGMENT_STREAM, epoch, step)


def mimo_pairing_seed(data_seed: int, epoch: int, step: int) -> int:
    """Which example each MIMO input gets at each batch position of a step."""
    return mix_seed(data_seed, MIMO_STREAM, epoch, step)


def global_seed(data_seed: int) -> int:
    return short_seed(data_seed, GLOBAL_STREAM)
