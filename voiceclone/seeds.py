"""Per-row seeds: a row's seed depends only on `--seed` and its id, never on its position or batch neighbours."""

from __future__ import annotations

import hashlib


def row_seed(base_seed: int, row_id: str) -> int:
    """A stable seed in [0, 2**63) from sha256 of the base seed and the row id."""
    digest = hashlib.sha256(f"voiceclone-seed\0{base_seed}\0{row_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_for(explicit: int | None, base_seed: int, row_id: str) -> int:
    """The seed a row runs with: its explicit `seed` column exactly, else the derived one."""
    return explicit if explicit is not None else row_seed(base_seed, row_id)


def segment_seed(row_seed_value: int, index: int) -> int:
    """The seed of segment `index` of a row: the row seed itself for segment 0, a stable derivation after that."""
    return row_seed_value if index == 0 else row_seed(row_seed_value, f"segment-{index}")
