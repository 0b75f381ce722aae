"""The subscriber connection's reply loop: every reply matched to the command that asked for it.

A subscriber connection carries three kinds of traffic: pushed messages (``message`` for a channel,
``pmessage`` for a pattern), replies to the commands the transport sends raw (PING, SUBSCRIBE,
UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, INFO, CONFIG GET), and, while the
connection is set up, txredisapi's own AUTH and SELECT. Redis answers commands in order, one reply
each (one channel per SUBSCRIBE keeps that true), so a FIFO of the commands sent says what each reply
answers; an error reply (``NOAUTH``, ``NOPERM``...) is thereby the refusal of one known command,
reported, never left in a queue nobody reads.

Messages read together are handed on as one batch per channel (one write per client for a burst, not
one per message); a reply between messages delivers the batch before it, so order is kept. Pattern
messages are batched the same way, per pattern, as ``(channel, data)`` pairs (``deliver_patterns``);
a run of channel messages and a run of pattern messages are delivered in the order they were read,
so a stream on a channel and a pattern gets its messages in the server's order.

On a Redis Cluster's sharded pub/sub (``SSUBSCRIBE``), messages come as ``smessage`` and are batched as
``message`` is; a node that drops a channel on its own (its slot migrated, the node failed over) pushes
a ``sunsubscribe`` nobody asked for: it is told apart from the answer to a ``SUNSUBSCRIBE`` by the FIFO
(the oldest command waiting is not that channel's ``SUNSUBSCRIBE``) and reported to ``pushes``.

Pure and reactor-free: ``ReplyLoop.process`` takes anything with hiredis's ``Reader.gets()``, so the
unit tests feed it raw RESP bytes. May import: ``ssebridge.redis.resp``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ssebridge.redis.resp import encode_command

__all__ = ["MESSAGE", "PMESSAGE", "SMESSAGE", "SUNSUBSCRIBE", "ReplyHandler", "ReplyLoop", "ReplySource"]

MESSAGE = b"message"
PMESSAGE = b"pmessage"
SMESSAGE = b"smessage"
SUNSUBSCRIBE = b"sunsubscribe"
_SUNSUBSCRIBE_COMMAND = b"SUNSUBSCRIBE"


class ReplySource(Protocol):
    """hiredis's ``Reader``: each ``gets()`` is one parsed reply, or ``False`` when none is complete."""

    def gets(self) -> Any: ...


class ReplyHandler(Protocol):
    """What the loop reports to (the transport)."""

    def deliver(self, batch: dict[bytes, list[bytes]]) -> None:
        """Messages read together, per channel, in order."""

    def deliver_patterns(self, batch: dict[bytes, list[tuple[bytes, bytes]]]) -> None:
        """Pattern messages read together, per pattern: ``(channel, data)`` pairs, in order."""

    def replied(self, command: bytes, argument: bytes, reply: Any) -> None:
        """A reply to ``command`` (upper case) sent with first argument ``argument`` (``b""``: none)."""

    def refused(self, command: bytes, argument: bytes, error: str) -> None:
        """An error reply to ``command``."""

    def unexpected(self, reply: Any) -> None:
        """A reply no command sent here waits for (dropped after this report)."""


class ReplyLoop:
    """The commands sent on one connection and not yet answered, and the loop that answers them."""

    __slots__ = ("handler", "sent", "pushes")

    def __init__(self, handler: ReplyHandler, pushes: Callable[[bytes], None] | None = None) -> None:
        self.handler = handler
        #: (command, first argument) of every command awaiting its reply, oldest first.
        self.sent: deque[tuple[bytes, bytes]] = deque()
        #: Told of each channel a cluster node unsubscribed on its own (``None``: not sharded pub/sub).
        self.pushes = pushes

    def command(self, *args: bytes) -> bytes:
        """The RESP bytes of a command to write now; its reply is expected after those sent before."""
        self.sent.append((args[0].upper(), args[1] if len(args) > 1 else b""))
        return encode_command(*args)

    def process(self, reader: ReplySource) -> None:
        """Handle every complete reply ``reader`` holds."""
        handler = self.handler
        batch: dict[bytes, list[bytes]] | None = None
        pbatch: dict[bytes, list[tuple[bytes, bytes]]] | None = None
        while True:
            reply = reader.gets()
            if reply is False:
                break
            if type(reply) is list:
                size = len(reply)
                if size == 3 and (reply[0] == MESSAGE or reply[0] == SMESSAGE):
                    if pbatch is not None:
                        # Order across the two kinds: pattern messages read before go out first.
                        handler.deliver_patterns(pbatch)
                        pbatch = None
                    if batch is None:
                        batch = {}
                    messages = batch.get(reply[1])
                    if messages is None:
                        batch[reply[1]] = [reply[2]]
                    else:
                        messages.append(reply[2])
                    continue
                if size == 4 and reply[0] == PMESSAGE:
                    if batch is not None:
                        handler.deliver(batch)
                        batch = None
                    if pbatch is None:
                        pbatch = {}
                    pairs = pbatch.get(reply[1])
                    if pairs is None:
                        pbatch[reply[1]] = [(reply[2], reply[3])]
                    else:
                        pairs.append((reply[2], reply[3]))
                    continue
            # Anything else is ordered against the messages around it: deliver what came before first.
            if batch is not None:
                handler.deliver(batch)
                batch = None
            if pbatch is not None:
                handler.deliver_patterns(pbatch)
                pbatch = None
            if (
                self.pushes is not None
                and type(reply) is list
                and len(reply) == 3
                and reply[0] == SUNSUBSCRIBE
                and (not self.sent or self.sent[0] != (_SUNSUBSCRIBE_COMMAND, reply[1]))
            ):
                self.pushes(reply[1])
                continue
            if not self.sent:
                handler.unexpected(reply)
                continue
            command, argument = self.sent.popleft()
            if isinstance(reply, Exception):
                handler.refused(command, argument, str(reply) or type(reply).__name__)
            else:
                handler.replied(command, argument, reply)
        if batch is not None:
            handler.deliver(batch)
        if pbatch is not None:
            handler.deliver_patterns(pbatch)
