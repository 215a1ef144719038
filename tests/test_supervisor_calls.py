"""How the supervisor answers workers' store calls, over real control channels (no worker
processes: each worker end is a channel this test reads): the order of changes and replies a
worker sees, and replies that do not wait for a long queue of calls behind them."""

from __future__ import annotations

import asyncio
from typing import Any

from common.limits import ANY_VERSION
from fsserver.calls import StoreCalls
from fsserver.channel import MessageChannel, channel_pair
from fsserver.children import Child, Role
from fsserver.store import Linked, Reserved, Store
from tests.serverproc import eventually

DIGEST = b"\x07" * 16


def seeded_store() -> Store:
    """A store whose share "s" holds content DIGEST: reserving it again links at once."""
    store = Store(1 << 20)
    reserved = store.reserve(0, "s", "seed", 10, 0, 0o644, DIGEST, ANY_VERSION)
    assert isinstance(reserved, Reserved)
    store.commit(0, reserved.ticket, "s", "seed", 0, 0o644, DIGEST, ANY_VERSION)
    store.take_changes(lambda share, origin: False)  # the seed is old news
    return store


def link(call_id: int, path: str, origin: int) -> tuple[int, str, tuple[Any, ...]]:
    """An RPC call that stores *path* with the seeded content (one change, at once)."""
    return (call_id, "reserve", ("s", path, 10, 0, 0o644, DIGEST, ANY_VERSION, origin))


async def serve(calls: list[tuple[int, list[Any]]], watching: dict[int, dict[str, int | None]]
                ) -> dict[int, list[Any]]:  # fmt: skip
    """Queue *calls* (worker index, batch), let the supervisor serve them, and return what
    each worker's end of its control channel received, in order."""
    loop = asyncio.get_running_loop()
    workers: dict[int, Child] = {}
    served = StoreCalls(seeded_store(), workers, None)
    received: dict[int, list[Any]] = {}
    ends = []
    for index in (0, 1):
        ours, theirs = channel_pair()
        exited: asyncio.Future[int] = loop.create_future()
        child = Child(Role.WORKER, index, None, exited)  # type: ignore[arg-type]
        child.channel = MessageChannel(ours, lambda msg, fds: None, on_close=lambda: None)
        child.watching = watching.get(index, {})
        workers[index] = child
        got = received[index] = []
        ends.append(MessageChannel(theirs, lambda msg, fds, got=got: got.append(msg),
                                   on_close=lambda: None))  # fmt: skip
    for index, batch in calls:
        served.calls.append((workers[index], batch))
    served.serve()
    expected = sum(len(batch) for _, batch in calls)

    def replies() -> int:
        return sum(len(msg[1]) for got in received.values() for msg in got if msg[0] == "rpc")

    await eventually(lambda: replies() == expected, 5, "every reply")
    for child in workers.values():
        assert child.channel is not None
        child.channel.close()
    for end in ends:
        end.close()
    return received


def test_a_worker_is_sent_earlier_changes_before_the_reply_to_a_later_call():
    """Worker 0's client stores f, then worker 1's client stores g. Worker 1, whose client
    watches the share, must see f's change before the reply about g: the sync client counts
    every version below its own latest as seen."""
    calls = [(0, [link(1, "f", origin=11)]), (1, [link(1, "g", origin=22)])]
    received = asyncio.run(serve(calls, watching={1: {"s": 22}}))
    assert [msg[0] for msg in received[1]] == ["feed", "rpc"]
    [change] = received[1][0][1]
    assert change.entry.path == "f" and change.origin == 11  # g is its own: not echoed
    [(_, ok, result)] = received[1][1][1]
    assert ok and isinstance(result, Linked) and result.version > change.entry.version


def test_replies_do_not_wait_for_a_long_queue_of_calls():
    """A worker's 250 calls in one message (one slice) are answered in several messages, the
    first long before the last call is served."""
    count = 250
    batch = [link(n, f"p{n}", origin=0) for n in range(1, count + 1)]
    received = asyncio.run(serve([(0, batch)], watching={}))
    messages = [msg[1] for msg in received[0] if msg[0] == "rpc"]
    assert len(messages) > 1
    answered = [call_id for replies in messages for call_id, _, _ in replies]
    assert answered == list(range(1, count + 1))  # each once, in order


def test_a_worker_sees_its_replies_and_others_changes_in_the_order_they_were_made():
    """Two connections of one worker, X and Y, both watching the share: X stores g, then Y
    stores h. The worker must get the reply about g before h's change (a later version), and
    g's change before the reply about h."""
    calls = [(1, [link(1, "g", origin=21), link(2, "h", origin=22)])]
    received = asyncio.run(serve(calls, watching={1: {"s": None}}))

    def position(kind: str, match) -> int:
        return next(n for n, msg in enumerate(received[1]) if msg[0] == kind
                    and any(match(item) for item in msg[1]))  # fmt: skip

    reply_g = position("rpc", lambda reply: reply[0] == 1)
    reply_h = position("rpc", lambda reply: reply[0] == 2)
    change_g = position("feed", lambda change: change.entry.path == "g")
    change_h = position("feed", lambda change: change.entry.path == "h")
    assert reply_g < change_h and change_g < reply_h
