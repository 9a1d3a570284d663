"""What a route sees of a message: raw bytes, MSH header, and lazily the full parse."""

from __future__ import annotations

from functools import cached_property

from engine.docrequest.consistency import entity_id
from engine.hl7.message import Message
from engine.hl7.path import compile_path
from engine.hl7.scan import Header, scan

_HEAD_SEGMENTS = ("MSH", "PID")


class MessageContext:
    def __init__(self, uid: str, channel: str, raw: bytes, received_at: float):
        self.uid, self.channel, self.raw, self.received_at = uid, channel, raw, received_at

    @cached_property
    def header(self) -> Header:
        return scan(self.raw)

    @cached_property
    def message(self) -> Message:
        return Message.parse(self.raw)

    @cached_property
    def document_request(self):
        """The typed document request, or None when this is not an ORU/MDM document message."""
        from engine.docrequest import parse_document_request
        from engine.docrequest.errors import RequestError

        if self.header.message_code not in ("ORU", "MDM") or "CISIS_CDA" not in self.header.profile:
            return None
        try:
            return parse_document_request(self.message)
        except RequestError:
            return None

    @cached_property
    def head(self) -> Message:
        """MSH and the first PID, read as the full parse reads them (Message.parse_head)."""
        return Message.parse_head(self.raw)

    def get(self, path: str) -> str:
        compiled = compile_path(path)
        # A path into MSH or the first PID (a FIFO key: PID-3.1) needs no full parse, unless
        # one was made already.
        if compiled.segment in _HEAD_SEGMENTS and not compiled.selectors and "message" not in self.__dict__:
            return compiled.get(self.head) or ""
        return compiled.get(self.message) or ""

    def get_all(self, path: str) -> list[str]:
        return self.message.get_all(path)

    @cached_property
    def document_ids(self) -> tuple[str, str, str]:
        """(action, document id, replaced document id) used to cancel superseded pending sends."""
        request = self.document_request
        if request is None:
            return "", "", ""
        doc_id = request.document_id or _cda_id(request)
        return request.action.value, entity_id(doc_id), entity_id(request.replaced_document_id)


def _cda_id(request) -> str:
    from engine.docrequest.consistency import read_cda_header

    try:
        header = read_cda_header(request.document.content)
    except Exception:  # an unreadable CDA simply has no id to cancel by
        return ""
    if header.id is None:
        return ""
    return f"{header.id.root}.{header.id.extension}" if header.id.extension else header.id.root
