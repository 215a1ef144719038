"""``Client``: the asyncio API to an FS server that the CLI, the sync engine and the tests use.

    async with await Client.connect("127.0.0.1:7878", share="default") as client:
        await client.put("notes.txt", "docs/notes.txt")
        entries = await client.ls("docs/")

Many operations may run at once on one connection (``put_many`` keeps a window of uploads in
flight), each as its own file session on the wire. A ``put`` or ``get`` whose connection is
lost connects again and goes on from where it stopped (``fsclient.resume``), unless the client
is subscribed: the owner of a subscription reconnects it (the sync engine does), and its next
transfer of the same file resumes then.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from common import messages as m
from common.errors import (
    FSError,
    HashMismatch,
    NotFound,
    RemoteError,
    RemoteProtocolError,
)
from common.limits import (
    ABSOLUTE_MAX_PACKET,
    ANY_VERSION,
    DEFAULT_MAX_PACKET,
    MAGIC,
    NO_FILE,
    PROTOCOL_VERSION,
)
from common.paths import check_name, normalize_path, normalize_prefix
from common.state import Phase
from fsclient.access import DEFAULT_SERVER, Access
from fsclient.batch import BatchUpload, Item, OnResult
from fsclient.compress import OFF, CompressSetting, PayloadPolicy, local_peer
from fsclient.connect import (
    closed_at_handshake,
    looks_like_http,
    looks_like_tls,
    open_connection,
    parse_server,
)
from fsclient.download import download
from fsclient.durable import FolderSync
from fsclient.protocol import ClientProtocol, ConnectionLost, Leftover, Mailbox, refusal
from fsclient.resume import drop_partial, retrying
from fsclient.transfer import BytesSource, FileChanged, FileSource, Known, Progress
from fsclient.upload import upload
from fsclient.versions import VersionCalls

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4


class Client(VersionCalls):
    def __init__(self, proto: ClientProtocol, hello: m.VersionHandshakeResponse) -> None:
        self.proto = proto
        self.folders = FolderSync()
        """Folder flushes after downloads, shared by the downloads in flight."""
        self.worker_id = hello.worker_id
        self.store_id = hello.store_id
        self.max_packet = hello.max_packet
        self.max_in_flight = hello.max_in_flight
        """The server's limit of open sessions (and of outstanding requests): calls wait for
        a free one instead of passing it."""
        self._ids = itertools.count(1)
        self.dial: Callable[[], Awaitable[Client]] | None = None
        """Connects again the way this client was connected (``reconnect``)."""
        self._reconnecting = asyncio.Lock()
        self.payloads = PayloadPolicy(CompressSetting(OFF), proto.conn, local=True)
        """Whether uploads and downloads go compressed (``connect`` sets it)."""

    @classmethod
    async def connect(
        cls,
        server: str = DEFAULT_SERVER,
        share: str = "default",
        *,
        client_id: str | None = None,
        max_packet: int | None = None,
        access: Access | None = None,
        timeout: float = 10.0,
        create_share: bool = True,
    ) -> Client:
        """Connect (over TLS if *access* says so) and shake hands; *max_packet* None proposes
        the largest size there is. Without *create_share* a share that does not exist yet is
        refused (``NoSuchShare``) instead of being made by the first upload."""
        host, port = parse_server(server)
        check_name(share)
        client_id = check_name(client_id or f"fsclient-{os.urandom(4).hex()}", "client id")
        access = access or Access()
        compress = CompressSetting.given(access.compress)
        proposal = max_packet or ABSOLUTE_MAX_PACKET
        if proposal < DEFAULT_MAX_PACKET:
            raise ValueError(f"--max-packet must be at least {DEFAULT_MAX_PACKET}")
        proto = await open_connection(host, port, proposal, access, timeout)
        auth = access.token.encode()
        try:  # (the server may have closed the connection before this is sent)
            flags = 0 if create_share else m.HandshakeFlags.EXISTING_SHARE
            if compress.offers:
                flags |= m.HandshakeFlags.ZSTD
            proto.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, proposal, client_id, share,
                                          auth, flags))  # fmt: skip
            hello = await asyncio.wait_for(proto.handshake, timeout)
        except TimeoutError:
            proto.abort(ConnectionError("no handshake answer from server"), send_error=False)
            raise ConnectionError(f"{host}:{port} did not answer the FS handshake") from None
        except (ConnectionLost, RemoteProtocolError) as exc:
            foreign = looks_like_tls(proto.head) or looks_like_http(proto.head)
            if isinstance(exc, RemoteProtocolError) and not foreign:
                raise  # a server that breaks the protocol, not one that closed
            raise await closed_at_handshake(host, port, proto.head, access) from None
        if hello.status is not m.HandshakeStatus.OK:
            proto.abort(RemoteError(hello.message), send_error=False)
            raise refusal(hello.status, hello.message)
        client = cls(proto, hello)
        extra = proto.transport.get_extra_info
        local = local_peer(extra("peername"), extra("sockname"))
        client.payloads = PayloadPolicy(compress, proto.conn, local)
        client.dial = functools.partial(cls.connect, server, share, client_id=client_id,
                                        max_packet=max_packet, access=access,
                                        timeout=timeout, create_share=True)  # fmt: skip
        return client

    @property
    def may_reconnect(self) -> bool:
        """A transfer cut short connects again by itself: not on a subscribed connection
        (its owner reconnects, and subscribes again), nor on one made without ``connect``."""
        return self.dial is not None and self.proto.notifications is None

    async def reconnect(self) -> None:
        """Replace a lost connection with a new one to the same server and share (once, for
        all the transfers that lost it)."""
        assert self.dial is not None
        async with self._reconnecting:
            if self.proto.failure is None:
                return  # another transfer did it meanwhile
            fresh = await self.dial()
            self.proto, self.worker_id, self.store_id = fresh.proto, fresh.worker_id, fresh.store_id
            self.max_packet, self.max_in_flight = fresh.max_packet, fresh.max_in_flight
            self.payloads = fresh.payloads

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        transport = self.proto.transport
        if transport is not None and not transport.is_closing():
            self.proto.flush()
            transport.close()
        await self.proto.closed

    # -- uploads -----------------------------------------------------------------------------

    async def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        base_version: int = ANY_VERSION,
        progress: Progress | None = None,
        known: Known | None = None,
    ) -> m.FileEntry:
        """Upload a local file; returns its entry as stored (with the new version).
        *known*: see ``FileSource``. A lost connection is replaced, and the upload resumed."""
        path = normalize_path(remote)
        attempt = functools.partial(self._put_file, local, path, base_version, progress, known)
        return await retrying(self, attempt, f"put {path}")

    async def _put_file(self, local: str | os.PathLike[str], path: str, base_version: int,
                        progress: Progress | None, known: Known | None) -> m.FileEntry:  # fmt: skip
        for attempt in range(MAX_ATTEMPTS):
            try:
                source = FileSource(local, known if attempt == 0 else None)
            except FileChanged:
                continue
            try:
                return await upload(self, source, path, base_version, progress)
            except FileChanged:
                continue
            finally:
                source.close()
        raise HashMismatch(f"{local} keeps changing while it is uploaded")

    async def put_bytes(
        self,
        data: bytes,
        remote: str,
        *,
        mtime_ns: int = 0,
        mode: int = 0o644,
        base_version: int = ANY_VERSION,
    ) -> m.FileEntry:
        path = normalize_path(remote)
        source = BytesSource(data, mtime_ns, mode)
        attempt = functools.partial(upload, self, source, path, base_version)
        return await retrying(self, attempt, f"put {path}")

    async def put_many(
        self, pairs: Iterable[tuple[str | os.PathLike[str], str] | Item], *, window: int = 256,
        on_result: OnResult | None = None, keep: bool = True,
    ) -> list[m.FileEntry | FSError | OSError]:  # fmt: skip
        """Upload many files with up to *window* in flight; one result (or error) per pair,
        in order. A pair may carry a base version to upload against, and what is known of
        the file (see ``batch.Item``). *on_result(index, result)* hears of each file as soon
        as it is done; with *keep* False the results are told to it only (the list is empty).
        Small files are pipelined without a coroutine each (``BatchUpload``)."""
        return await BatchUpload(self, pairs, window, on_result, keep).run()

    # -- downloads ---------------------------------------------------------------------------

    async def get(
        self,
        remote: str,
        local: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        before_replace: Callable[[], None] | None = None,
        version: int = 0,
    ) -> m.FileEntry:
        """Download to *local* (a file, or an existing folder to put it in), atomically;
        *version*: one of the path's kept versions (``history``), 0: the current one.
        *before_replace* may raise to keep the file in place from being replaced. A download
        cut short goes on from where it stopped (on a new connection, unless the client is
        subscribed: then at the next ``get`` of the file)."""
        path = normalize_path(remote)
        dest = Path(local)
        if dest.is_dir():
            dest = dest / path.rsplit("/", 1)[-1]
        elif not dest.parent.is_dir():  # (else the error would name the temp file)
            raise FileNotFoundError(f"folder does not exist: {dest.parent}")
        return await self.get_file(path, dest, progress=progress, before_replace=before_replace,
                                   version=version)  # fmt: skip

    async def get_file(
        self,
        path: str,
        dest: Path,
        *,
        progress: Progress | None = None,
        before_replace: Callable[[], None] | None = None,
        version: int = 0,
    ) -> m.FileEntry:
        """``get`` of a normalized *path* to the file *dest* in a folder that exists, with no
        look at the disk first (the sync client made the folder: two stats a file were a tenth
        of its CPU in a download of many small files)."""
        attempt = functools.partial(download, self, path, dest, progress, before_replace,
                                    version)  # fmt: skip
        try:
            return await retrying(self, attempt, f"get {path}")
        except BaseException:
            if self.may_reconnect:  # given up: nobody resumes it
                drop_partial(dest)
            raise

    # -- queries -----------------------------------------------------------------------------

    async def ls_pages(self, prefix: str = "", *, page: int = 1000
                       ) -> AsyncIterator[list[m.FileEntry]]:  # fmt: skip
        """The files whose path starts with *prefix*, in path order, a page at a time: a
        listing of any size in bounded memory."""
        prefix = normalize_prefix(prefix)
        after = ""
        while True:
            reply: m.ListResponse = await self._request(
                lambda rid: m.ListRequest(rid, page, prefix, after)  # noqa: B023
            )
            self._check_lookup(reply.status, reply.message)
            yield list(reply.entries)
            if not reply.more or not reply.entries:
                return
            after = reply.entries[-1].path

    async def ls(self, prefix: str = "", *, page: int = 1000) -> list[m.FileEntry]:
        return [entry async for part in self.ls_pages(prefix, page=page) for entry in part]

    async def shares(self) -> list[m.ShareInfo]:
        """The shares this client's token opens (every one, on a server without tokens)."""
        found: list[m.ShareInfo] = []
        while True:
            after = found[-1].name if found else ""
            reply: m.ShareListResponse = await self._request(
                lambda rid: m.ShareListRequest(rid, after)  # noqa: B023
            )
            found.extend(reply.shares)
            if not reply.more or not reply.shares:
                return found

    async def ls_tree(self, path: str = "") -> list[m.FileEntry]:
        return [entry async for part in self.ls_tree_pages(path) for entry in part]

    async def ls_tree_pages(self, path: str = "") -> AsyncIterator[list[m.FileEntry]]:
        """The file *path*, if there is one, then every file in the folder *path*, a page at
        a time: matched by whole segments (``json`` lists ``json/...``, never
        ``jsonx/...``); ``""`` or ``"/"`` is the whole share. (``ls`` matches a plain string
        prefix, as the protocol does.)"""
        folder = path.rstrip("/")
        if folder:
            folder = normalize_path(folder)
            itself = None if path.endswith("/") else await self._stat_or_none(folder)
            if itself is not None:
                yield [itself]
            folder += "/"
        async for part in self.ls_pages(folder):
            yield part

    async def _stat_or_none(self, path: str) -> m.FileEntry | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    async def stat(self, remote: str) -> m.FileEntry:
        path = normalize_path(remote)
        reply: m.StatResponse = await self._request(lambda rid: m.StatRequest(rid, path))
        self._check_lookup(reply.status, reply.message)
        assert reply.entry is not None
        return reply.entry

    async def rm(self, remote: str, *, base_version: int = ANY_VERSION) -> int:
        """Delete a file; returns the version of the deletion."""
        path = normalize_path(remote)
        reply: m.DeleteResponse = await self._request(
            lambda rid: m.DeleteRequest(rid, base_version, path)
        )
        self._check_lookup(reply.status, reply.message)
        return reply.version

    async def subscribe(self, since: int = 0) -> ChangeStream:
        """Every change to the share after version *since*, then live ones, in order."""
        if self.proto.notifications is not None:
            raise RuntimeError("this connection is already subscribed")
        self.proto.notifications = asyncio.Queue()
        reply: m.SubscribeResponse = await self._request(lambda rid: m.SubscribeRequest(rid, since))
        if reply.status is not m.LookupStatus.OK:
            self.proto.notifications = None  # refused: the connection may subscribe again
            raise refusal(reply.status, reply.message)
        return ChangeStream(reply.seq, self.proto.notifications)

    async def ping(self) -> None:
        nonce = int.from_bytes(os.urandom(8)) >> 1
        fut = self.proto.pings[nonce] = asyncio.get_running_loop().create_future()
        self.proto.send(m.Ping(nonce, reply=False))
        await fut

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _check_lookup(status: m.LookupStatus, message: str) -> None:
        if status is not m.LookupStatus.OK:
            raise refusal(status, message)

    async def _request(self, make: Any) -> Any:
        await self.proto.slots.wait(self.proto.slots.request_room)
        rid = self._new_id(self.proto.requests)
        fut = self.proto.requests[rid] = asyncio.get_running_loop().create_future()
        self.proto.send(make(rid))
        return await fut

    def new_file_id(self) -> int:
        return self._new_id(self.proto.mailboxes)

    def new_request_id(self) -> int:
        return self._new_id(self.proto.requests)

    async def open_session(self) -> tuple[int, Mailbox]:
        """A file id and mailbox for a new session, once the server's limit allows one."""
        await self.proto.slots.wait(self.proto.slots.session_room)
        fid = self.new_file_id()
        box = self.proto.mailboxes[fid] = Mailbox(asyncio.get_running_loop())
        if self.proto.failure is not None:
            box.fail(self.proto.failure)
        return fid, box

    def close_session(self, fid: int) -> None:
        """Forget the session. One cut short is ended properly: at once if it is uploading,
        or by a Leftover when the answer the server still owes it arrives."""
        self.proto.mailboxes.pop(fid, None)
        phase = self.proto.conn.sessions.phase(fid)
        if phase is None or self.proto.failure is not None:
            return
        if phase is Phase.UPLOADING:
            self.proto.send(m.FileSyncCancel(fid))
        else:
            self.proto.mailboxes[fid] = Leftover(self.proto, fid)

    def _new_id(self, taken: dict[int, Any]) -> int:
        while True:
            candidate = next(self._ids) % NO_FILE
            if (
                candidate
                and candidate not in taken
                and not self.proto.conn.sessions.phase(candidate)
            ):
                return candidate


class ChangeStream:
    """``async for note in stream``: ChangeNotifications; ``seq`` was the share's latest
    version when the subscription started."""

    def __init__(self, seq: int, queue: asyncio.Queue[m.ChangeNotification | BaseException]):
        self.seq = seq
        self._queue = queue

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> m.ChangeNotification:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)
            raise item
        return item

    def arrived(self) -> list[m.ChangeNotification]:
        """The notifications already here, without waiting for more."""
        items = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                raise item
            items.append(item)
        return items
