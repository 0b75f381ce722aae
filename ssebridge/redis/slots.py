"""Redis Cluster's key slots: which of the 16384 slots a key (or a sharded pub/sub channel) lives in.

A slot is CRC16 (the XMODEM variant: polynomial 0x1021, initial value 0) of the key modulo 16384, where
a key holding a hash tag, a ``{...}`` with at least one byte between the first ``{`` and the first
``}`` after it, is hashed on that part only. That is how a channel's history stream
(``ssebridge:{C}:h``) and its envelope channel (``ssebridge:{C}:e``) share a slot, hence a node.

Pure (no I/O); May import: nothing of ssebridge.
"""

from __future__ import annotations

__all__ = ["SLOTS", "crc16", "hash_part", "key_slot"]

#: How many slots a Redis Cluster has.
SLOTS = 16384


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of ``data`` (``crc16(b"123456789") == 0x31C3``)."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_part(key: bytes) -> bytes:
    """The part of ``key`` that is hashed: its hash tag when it has a non-empty one, else all of it."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    """The cluster slot of ``key`` (what ``CLUSTER KEYSLOT`` answers)."""
    return crc16(hash_part(key)) % SLOTS
