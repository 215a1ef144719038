"""The per-file session table (``common.state.TRANSITIONS``) and its byte accounting."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ErrorCode, LocalProtocolError
from common.limits import MAX_IN_FLIGHT, NO_FILE
from common.state import (
    TRANSITIONS,
    Phase,
    RequestTable,
    Role,
    Session,
    SessionTable,
    Step,
)

C, S = Role.CLIENT, Role.SERVER
SIZED = {Step.INIT, Step.DOWNLOAD_OK}
"""Steps that carry the session's size."""
LIVE_PHASES = [p for p in Phase if p is not Phase.DONE]
ROWS = sorted(TRANSITIONS.items(), key=lambda kv: (str(kv[0][0]), kv[0][1].name, kv[0][2].name))


def row_id(row: tuple[tuple[Phase | None, Step, Role], Phase]) -> str:
    (phase, step, sender), nxt = row
    return f"{phase.name if phase else 'none'}-{step.name}-{sender.name}->{nxt.name}"


def planted(phase: Phase | None, fid: int = 7, size: int = 10, transferred: int = 0):
    table = SessionTable()
    if phase is not None:
        table.sessions[fid] = Session(phase, size, transferred)
    return table


def snapshot(table: SessionTable) -> dict[int, tuple[Phase, int, int]]:
    return {fid: (s.phase, s.size, s.transferred) for fid, s in table.sessions.items()}


# -- the listed rows ---------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_every_listed_row_works(row):
    (phase, step, sender), nxt = row
    # CheckHash needs every byte; plant a complete session for it
    table = planted(phase, size=10, transferred=10 if step is Step.CHECK_HASH else 3)
    size = 25 if step in SIZED else None
    assert table.apply(7, step, sender, size) is nxt
    if nxt is Phase.DONE:
        assert table.phase(7) is None
        assert 7 not in table.sessions and len(table) == 0
    else:
        assert table.phase(7) is nxt
        assert len(table) == 1
        if size is not None:
            assert table.sessions[7].size == 25


def test_table_shape():
    """Only the client opens sessions; every step is used; DONE is never a starting phase."""
    # keys and values are of the right enum, in the right place (equal ints would not tell)
    for (phase, step, sender), nxt in TRANSITIONS.items():
        assert phase is None or type(phase) is Phase
        assert (type(step), type(sender), type(nxt)) == (Step, Role, Phase)
    openers = {(step, sender) for (phase, step, sender) in TRANSITIONS if phase is None}
    assert openers == {(Step.INIT, C), (Step.DOWNLOAD_REQUEST, C)}
    assert {step for _, step, _ in TRANSITIONS} == set(Step)
    assert all(phase is not Phase.DONE for phase, _, _ in TRANSITIONS)
    assert {nxt for nxt in TRANSITIONS.values()} == set(Phase)
    # each phase waits on one side only: nobody can send into a phase the other side owns
    for phase in LIVE_PHASES:
        senders = {sender for (p, _, sender) in TRANSITIONS if p is phase}
        assert len(senders) == 1, phase


def paths_from_none() -> dict[Phase, list[tuple[Step, Role]]]:
    """Shortest step sequence from "no session" to each phase."""
    paths: dict[Phase | None, list[tuple[Step, Role]]] = {None: []}
    queue: deque[Phase | None] = deque([None])
    while queue:
        here = queue.popleft()
        for (phase, step, sender), nxt in TRANSITIONS.items():
            if phase is here and nxt not in paths and nxt is not Phase.DONE:
                paths[nxt] = [*paths[here], (step, sender)]
                queue.append(nxt)
    return {k: v for k, v in paths.items() if k is not None}


def test_every_phase_is_reachable_and_can_end():
    paths = paths_from_none()
    assert set(paths) == set(LIVE_PHASES)
    for phase in LIVE_PHASES:
        ends, seen = False, {phase}
        queue = deque([phase])
        while queue:
            here = queue.popleft()
            for (p, _, _), nxt in TRANSITIONS.items():
                if p is here:
                    ends |= nxt is Phase.DONE
                    if nxt not in seen and nxt is not Phase.DONE:
                        seen.add(nxt)
                        queue.append(nxt)
        assert ends, f"{phase.name} can never end without an Error"


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_every_row_reached_by_driving_the_table(row):
    """The same rows, reached through the table itself rather than a planted session."""
    (phase, step, sender), nxt = row
    table = SessionTable()
    for s, who in paths_from_none().get(phase, []) if phase else []:
        table.apply(3, s, who, 0 if s in SIZED else None)
    assert table.phase(3) is phase
    assert table.apply(3, step, sender, 0 if step in SIZED else None) is nxt


# -- everything else is an error ---------------------------------------------------------------

UNLISTED = [
    key
    for key in itertools.product([None, *LIVE_PHASES], list(Step), list(Role))
    if key not in TRANSITIONS
]


@pytest.mark.parametrize(
    "key",
    UNLISTED,
    ids=lambda k: f"{k[0].name if k[0] else 'none'}-{k[1].name}-{k[2].name}",
)
def test_unlisted_combinations_are_refused(key):
    phase, step, sender = key
    table = planted(phase, size=4, transferred=4)
    table.sessions[8] = Session(Phase.UPLOADING, 1, 0)
    before = snapshot(table)
    with pytest.raises(LocalProtocolError) as info:
        table.apply(7, step, sender, 1 if step in SIZED else None)
    assert info.value.code is (
        ErrorCode.UNKNOWN_FILE if phase is None else ErrorCode.UNEXPECTED_PACKET
    )
    assert snapshot(table) == before, "a refused step changes nothing"


# docs/PROTOCOL.md 6.2, row by row
DOCUMENTED = {
    (None, Step.INIT, C): Phase.AWAIT_INIT_RESPONSE,
    (Phase.AWAIT_INIT_RESPONSE, Step.ACCEPTED, S): Phase.UPLOADING,
    (Phase.AWAIT_INIT_RESPONSE, Step.ALREADY_HAVE, S): Phase.AWAIT_FINISH,
    (Phase.AWAIT_INIT_RESPONSE, Step.REFUSED, S): Phase.DONE,
    (Phase.UPLOADING, Step.DATA, C): Phase.UPLOADING,
    (Phase.UPLOADING, Step.CHECK_HASH, C): Phase.AWAIT_HASH_RESULT,
    (Phase.UPLOADING, Step.CANCEL, C): Phase.DONE,
    (Phase.AWAIT_HASH_RESULT, Step.HASH_OK, S): Phase.AWAIT_FINISH,
    (Phase.AWAIT_HASH_RESULT, Step.HASH_MISMATCH, S): Phase.AWAIT_RETRY,
    (Phase.AWAIT_RETRY, Step.RETRY, S): Phase.UPLOADING,
    (Phase.AWAIT_FINISH, Step.FINISH, S): Phase.DONE,
    (None, Step.DOWNLOAD_REQUEST, C): Phase.AWAIT_DOWNLOAD_RESPONSE,
    (Phase.AWAIT_DOWNLOAD_RESPONSE, Step.DOWNLOAD_OK, S): Phase.DOWNLOADING,
    (Phase.AWAIT_DOWNLOAD_RESPONSE, Step.REFUSED, S): Phase.DONE,
    (Phase.DOWNLOADING, Step.DATA, S): Phase.DOWNLOADING,
    (Phase.DOWNLOADING, Step.CHECK_HASH, S): Phase.AWAIT_VERDICT,
    (Phase.AWAIT_VERDICT, Step.HASH_OK, C): Phase.DONE,
    (Phase.AWAIT_VERDICT, Step.HASH_MISMATCH, C): Phase.DONE,
}


def test_table_is_the_documented_one():
    assert TRANSITIONS == DOCUMENTED
    assert len(UNLISTED) + len(TRANSITIONS) == (len(LIVE_PHASES) + 1) * len(Step) * len(Role)


def test_reopening_an_open_file_id_is_unexpected():
    table = SessionTable()
    table.apply(1, Step.INIT, C, 5)
    for step in (Step.INIT, Step.DOWNLOAD_REQUEST):
        with pytest.raises(LocalProtocolError) as info:
            table.apply(1, step, C, 5 if step in SIZED else None)
        assert info.value.code is ErrorCode.UNEXPECTED_PACKET
    assert snapshot(table) == {1: (Phase.AWAIT_INIT_RESPONSE, 5, 0)}


def test_file_id_reusable_after_done():
    table = SessionTable()
    for _ in range(3):
        table.apply(1, Step.INIT, C, 0)
        table.apply(1, Step.ACCEPTED, S)
        table.apply(1, Step.CHECK_HASH, C)
        table.apply(1, Step.HASH_OK, S)
        assert table.apply(1, Step.FINISH, S) is Phase.DONE
        assert table.phase(1) is None
        table.apply(1, Step.DOWNLOAD_REQUEST, C)
        table.apply(1, Step.REFUSED, S)
    assert len(table) == 0


def test_sessions_are_independent():
    table = SessionTable()
    table.apply(1, Step.INIT, C, 10)
    table.apply(2, Step.DOWNLOAD_REQUEST, C)
    table.apply(2, Step.DOWNLOAD_OK, S, 4)
    table.apply(1, Step.ACCEPTED, S)
    assert snapshot(table) == {1: (Phase.UPLOADING, 10, 0), 2: (Phase.DOWNLOADING, 4, 0)}
    assert table.end(2)
    assert snapshot(table) == {1: (Phase.UPLOADING, 10, 0)}


def test_no_file_is_reserved():
    table = SessionTable()
    for step in (Step.INIT, Step.DOWNLOAD_REQUEST):
        with pytest.raises(LocalProtocolError):
            table.apply(NO_FILE, step, C, 1 if step in SIZED else None)
    assert len(table) == 0
    table.apply(NO_FILE - 1, Step.INIT, C, 1)
    table.apply(0, Step.INIT, C, 1)
    assert len(table) == 2


def test_session_limit():
    table = SessionTable(max_in_flight=3)
    for fid in range(3):
        table.apply(fid, Step.INIT, C, 1)
    with pytest.raises(LocalProtocolError) as info:
        table.apply(3, Step.DOWNLOAD_REQUEST, C)
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert len(table) == 3
    # steps of open sessions still work at the limit, and ending one frees a slot
    table.apply(0, Step.REFUSED, S)
    table.apply(3, Step.DOWNLOAD_REQUEST, C)
    assert len(table) == 3
    assert SessionTable().max_in_flight == MAX_IN_FLIGHT


def test_end():
    table = SessionTable()
    for phase in LIVE_PHASES:
        table.sessions[phase.value] = Session(phase, 1, 0)
    for phase in LIVE_PHASES:
        assert table.end(phase.value) is True
        assert table.phase(phase.value) is None
    assert table.end(1) is False
    assert len(table) == 0


# -- byte accounting ---------------------------------------------------------------------------


def uploading(size: int) -> SessionTable:
    table = SessionTable()
    table.apply(1, Step.INIT, C, size)
    table.apply(1, Step.ACCEPTED, S)
    return table


def downloading(size: int) -> SessionTable:
    table = SessionTable()
    table.apply(1, Step.DOWNLOAD_REQUEST, C)
    assert table.sessions[1].size == 0
    table.apply(1, Step.DOWNLOAD_OK, S, size)
    return table


@pytest.mark.parametrize(("make", "sender"), [(uploading, C), (downloading, S)])
def test_byte_accounting(make, sender):
    table = make(10)
    table.count_data(1, 0, sender)
    table.count_data(1, 4, sender)
    assert table.sessions[1].transferred == 4
    with pytest.raises(LocalProtocolError) as info:
        table.apply(1, Step.CHECK_HASH, sender)
    assert info.value.code is ErrorCode.UNEXPECTED_PACKET
    assert table.sessions[1].phase in (Phase.UPLOADING, Phase.DOWNLOADING)
    with pytest.raises(LocalProtocolError) as info:
        table.count_data(1, 7, sender)
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert table.sessions[1].transferred == 4, "a refused chunk counts for nothing"
    table.count_data(1, 6, sender)
    with pytest.raises(LocalProtocolError):
        table.count_data(1, 1, sender)
    table.apply(1, Step.CHECK_HASH, sender)
    assert table.sessions[1].transferred == 10
    with pytest.raises(LocalProtocolError) as info:
        table.count_data(1, 0, sender)
    assert info.value.code is ErrorCode.UNEXPECTED_PACKET


@pytest.mark.parametrize(("make", "sender"), [(uploading, S), (downloading, C)])
def test_data_from_the_wrong_side(make, sender):
    table = make(10)
    with pytest.raises(LocalProtocolError) as info:
        table.count_data(1, 1, sender)
    assert info.value.code is ErrorCode.UNEXPECTED_PACKET
    assert table.sessions[1].transferred == 0


@pytest.mark.parametrize("phase", [p for p in LIVE_PHASES if p not in (Phase.UPLOADING,)])
def test_client_data_only_while_uploading(phase):
    table = planted(phase, fid=1, size=10)
    with pytest.raises(LocalProtocolError) as info:
        table.count_data(1, 1, C)
    assert info.value.code is ErrorCode.UNEXPECTED_PACKET


def test_data_for_no_session():
    for sender in Role:
        with pytest.raises(LocalProtocolError) as info:
            SessionTable().count_data(1, 0, sender)
        assert info.value.code is ErrorCode.UNKNOWN_FILE


def test_retry_resets_the_count_not_the_size():
    table = uploading(10)
    table.count_data(1, 10, C)
    table.apply(1, Step.CHECK_HASH, C)
    table.apply(1, Step.HASH_MISMATCH, S)
    assert table.sessions[1].transferred == 10
    assert table.apply(1, Step.RETRY, S) is Phase.UPLOADING
    assert (table.sessions[1].size, table.sessions[1].transferred) == (10, 0)
    with pytest.raises(LocalProtocolError):
        table.apply(1, Step.CHECK_HASH, C)
    table.count_data(1, 10, C)
    table.apply(1, Step.CHECK_HASH, C)


def test_empty_file_needs_no_data():
    table = uploading(0)
    with pytest.raises(LocalProtocolError):
        table.count_data(1, 1, C)
    assert table.apply(1, Step.CHECK_HASH, C) is Phase.AWAIT_HASH_RESULT


def test_huge_sizes():
    table = uploading((1 << 64) - 1)
    table.count_data(1, 1 << 63, C)
    table.count_data(1, (1 << 63) - 1, C)
    assert table.apply(1, Step.CHECK_HASH, C) is Phase.AWAIT_HASH_RESULT


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 200),
    chunks=st.lists(st.integers(0, 80), max_size=12),
    download=st.booleans(),
)
def test_accounting_property(size, chunks, download):
    """Chunks are accepted while they fit, each refused one changes nothing, and CheckHash is
    allowed exactly when the count reaches the size."""
    table = downloading(size) if download else uploading(size)
    sender = S if download else C
    total = 0
    for n in chunks:
        if total + n <= size:
            table.count_data(1, n, sender)
            total += n
        else:
            with pytest.raises(LocalProtocolError) as info:
                table.count_data(1, n, sender)
            assert info.value.code is ErrorCode.LIMIT_EXCEEDED
        assert table.sessions[1].transferred == total
    if total == size:
        table.apply(1, Step.CHECK_HASH, sender)
        assert table.phase(1) in (Phase.AWAIT_HASH_RESULT, Phase.AWAIT_VERDICT)
    else:
        with pytest.raises(LocalProtocolError):
            table.apply(1, Step.CHECK_HASH, sender)
        assert table.phase(1) in (Phase.UPLOADING, Phase.DOWNLOADING)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from(list(Step)), st.sampled_from(list(Role))),
        max_size=40,
    )
)
def test_random_steps_follow_the_table(steps):
    """Against a model that is just a dict lookup: every step either follows TRANSITIONS or is
    refused without touching the table."""
    table = SessionTable()
    model: dict[int, Phase] = {}
    for fid, step, sender in steps:
        nxt = TRANSITIONS.get((model.get(fid), step, sender))
        if fid in model and step is Step.CHECK_HASH:
            table.sessions[fid].transferred = table.sessions[fid].size
        before = snapshot(table)
        if nxt is None:
            with pytest.raises(LocalProtocolError):
                table.apply(fid, step, sender, 0 if step in SIZED else None)
            assert snapshot(table) == before
            continue
        assert table.apply(fid, step, sender, 0 if step in SIZED else None) is nxt
        if nxt is Phase.DONE:
            del model[fid]
        else:
            model[fid] = nxt
        assert {f: s.phase for f, s in table.sessions.items()} == model


# -- requests ----------------------------------------------------------------------------------


class ListResponse: ...


class StatResponse: ...


def test_requests_open_and_close():
    requests = RequestTable()
    requests.open(1, ListResponse)
    requests.open(2, StatResponse)
    assert len(requests) == 2
    requests.close(2, StatResponse)
    requests.close(1, ListResponse)
    assert len(requests) == 0
    requests.open(1, StatResponse)  # reusable once answered
    assert requests.pending == {1: StatResponse}


def test_duplicate_request_id():
    requests = RequestTable()
    requests.open(1, ListResponse)
    for kind in (ListResponse, StatResponse):
        with pytest.raises(LocalProtocolError) as info:
            requests.open(1, kind)
        assert info.value.code is ErrorCode.UNEXPECTED_PACKET
    assert requests.pending == {1: ListResponse}


def test_response_must_match_a_pending_request():
    requests = RequestTable()
    with pytest.raises(LocalProtocolError) as info:
        requests.close(1, ListResponse)
    assert info.value.code is ErrorCode.UNEXPECTED_PACKET
    requests.open(1, ListResponse)
    with pytest.raises(LocalProtocolError):
        requests.close(1, StatResponse)
    assert requests.pending == {1: ListResponse}
    requests.close(1, ListResponse)
    with pytest.raises(LocalProtocolError):
        requests.close(1, ListResponse)


def test_request_limit():
    requests = RequestTable(max_in_flight=2)
    requests.open(1, ListResponse)
    requests.open(2, ListResponse)
    with pytest.raises(LocalProtocolError) as info:
        requests.open(3, ListResponse)
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert set(requests.pending) == {1, 2}
    requests.close(1, ListResponse)
    requests.open(3, ListResponse)
