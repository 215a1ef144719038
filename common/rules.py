"""Which role may send which packet, and which session step each packet makes: the rules
``FSConnection`` applies to both directions."""

from __future__ import annotations

from common import messages as m
from common.errors import LocalProtocolError
from common.messages import PacketType as T
from common.state import Step

CLIENT_SENDS = frozenset(
    {
        T.ERROR,
        T.PING,
        T.VERSION_HANDSHAKE,
        T.FILE_SYNC_INIT,
        T.FILE_SYNC_DATA,
        T.FILE_SYNC_CHECK_HASH,
        T.FILE_SYNC_CHECK_HASH_RESPONSE,
        T.FILE_SYNC_CANCEL,
        T.LIST_REQUEST,
        T.STAT_REQUEST,
        T.DOWNLOAD_REQUEST,
        T.DELETE_REQUEST,
        T.SUBSCRIBE_REQUEST,
        T.SMALL_FILE_BATCH,
        T.SMALL_FILE_BATCH_ZSTD,
        T.SHARE_LIST_REQUEST,
        T.DOWNLOAD_VERSION_REQUEST,
        T.VERSIONS_REQUEST,
        T.RESTORE_REQUEST,
        T.DELETED_LIST_REQUEST,
    }
)
SERVER_SENDS = frozenset(
    {
        T.ERROR,
        T.PING,
        T.VERSION_HANDSHAKE_RESPONSE,
        T.FILE_SYNC_INIT_RESPONSE,
        T.FILE_SYNC_DATA,
        T.FILE_SYNC_CHECK_HASH,
        T.FILE_SYNC_CHECK_HASH_RESPONSE,
        T.FILE_SYNC_RETRY_UPLOAD,
        T.FILE_SYNC_FINISH,
        T.LIST_RESPONSE,
        T.STAT_RESPONSE,
        T.DOWNLOAD_RESPONSE,
        T.DELETE_RESPONSE,
        T.SUBSCRIBE_RESPONSE,
        T.CHANGE_NOTIFICATION,
        T.SMALL_FILE_BATCH_RESPONSE,
        T.SHARE_LIST_RESPONSE,
        T.VERSIONS_RESPONSE,
        T.RESTORE_RESPONSE,
    }
)
RESPONSE_OF: dict[type, type] = {
    m.ListRequest: m.ListResponse,
    m.StatRequest: m.StatResponse,
    m.DeleteRequest: m.DeleteResponse,
    m.SubscribeRequest: m.SubscribeResponse,
    m.SmallFileBatch: m.SmallFileBatchResponse,
    m.ShareListRequest: m.ShareListResponse,
    m.VersionsRequest: m.VersionsResponse,
    m.RestoreRequest: m.RestoreResponse,
    m.DeletedListRequest: m.ListResponse,
}
RESPONSES = frozenset(RESPONSE_OF.values())
INIT_STEPS = {
    m.InitStatus.ACCEPTED: Step.ACCEPTED,
    m.InitStatus.ALREADY_HAVE_CONTENT: Step.ALREADY_HAVE,
}


def session_step(msg: m.Message) -> tuple[int, Step, int | None, int] | None:
    """The session transition a message makes, or None if it is not a session packet: (file
    id, step, the session's size if the packet sets it, the offset it names)."""
    match msg:
        case m.FileSyncInit(file_id=fid, size=size):
            return fid, Step.INIT, size, 0
        case m.FileSyncInitResponse(file_id=fid, status=status, offset=offset):
            step = INIT_STEPS.get(status, Step.REFUSED)
            if offset and step is not Step.ACCEPTED:
                raise LocalProtocolError(f"FileSyncInitResponse {status.name} with offset {offset}")
            return fid, step, None, offset
        case m.FileSyncCheckHash(file_id=fid):
            return fid, Step.CHECK_HASH, None, 0
        case m.FileSyncCheckHashResponse(file_id=fid, status=status):
            ok = status is m.HashStatus.OK
            return fid, Step.HASH_OK if ok else Step.HASH_MISMATCH, None, 0
        case m.FileSyncRetryUpload(file_id=fid):
            return fid, Step.RETRY, None, 0
        case m.FileSyncFinish(file_id=fid):
            return fid, Step.FINISH, None, 0
        case m.FileSyncCancel(file_id=fid):
            return fid, Step.CANCEL, None, 0
        case (
            m.DownloadRequest(file_id=fid, offset=offset)
            | m.DownloadVersionRequest(file_id=fid, offset=offset)
        ):
            return fid, Step.DOWNLOAD_REQUEST, None, offset
        case m.DownloadResponse(file_id=fid, status=status, entry=entry, offset=offset):
            if status is not m.LookupStatus.OK:
                if offset:
                    raise LocalProtocolError(f"DownloadResponse {status.name} with offset {offset}")
                return fid, Step.REFUSED, None, 0
            if entry is None:
                raise LocalProtocolError("DownloadResponse OK without an entry")
            return fid, Step.DOWNLOAD_OK, entry.size, offset
    return None
