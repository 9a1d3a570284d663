"""A local MSSanté operator for tests, demos and integrators (`pfi mss sim`).

One process offers SMTP submission (STARTTLS and/or implicit TLS, optional AUTH, client
certificates checked against the test CA) and IMAP4rev1 over implicit TLS. Every mail accepted
by SMTP lands in the INBOX of each recipient's in-memory account, so the engine can send to
its own application mailbox and read it back. Nothing is written to disk.
"""

from __future__ import annotations

import email.utils
import io
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email import policy

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.mail import imap4, smtp
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from engine.mss.tls import set_no_delay

SYSTEM_FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]


# --------------------------------------------------------------------------- IMAP side


@implementer(imap4.IMessagePart)
class _Part:
    """A MIME part of a stored message (enough for BODY[n] fetches)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.parsed = BytesParser(policy=policy.compat32).parsebytes(raw)
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = raw.partition(b"\n\n")
        self.body = body

    def getHeaders(self, negate, *names):
        wanted = {n.lower() for n in names}
        return {k.lower(): v for k, v in self.parsed.items() if not wanted or ((k.lower() in wanted) != bool(negate))}

    def getBodyFile(self):
        return io.BytesIO(self.body)

    def getSize(self):
        return len(self.raw)

    def isMultipart(self):
        return self.parsed.is_multipart()

    def getSubPart(self, part):
        payload = self.parsed.get_payload()
        return _Part(payload[part].as_bytes())


@implementer(imap4.IMessage, imap4.IMessageFile)
class StoredMessage(_Part):
    """A message of the in-memory mailbox."""

    def __init__(self, raw: bytes, uid: int, flags, date: str | None):
        super().__init__(raw)
        self.uid = uid
        self.flags = set(flags)
        self.date = date or email.utils.formatdate(time.time())

    def getUID(self):
        return self.uid

    def getFlags(self):
        return sorted(self.flags)

    def getInternalDate(self):
        return self.date

    def open(self):
        return io.BytesIO(self.raw)


def _text(token) -> str:
    return token.decode() if isinstance(token, bytes) else str(token)


@implementer(imap4.IMailbox, imap4.ISearchableMailbox, imap4.IMessageCopier)
class MemoryMailbox:
    """An IMAP mailbox kept in memory, with UIDs that survive reconnections."""

    def __init__(self, uid_validity: int):
        self.messages: list[StoredMessage] = []
        self.uid_validity = uid_validity
        self.next_uid = 1
        self.listeners: list = []
        self.store_failures = 0  # fault injection: refuse that many STORE commands

    # -- IMailboxInfo / IMailbox
    def getFlags(self):
        return SYSTEM_FLAGS

    def getHierarchicalDelimiter(self):
        return "/"

    def getUIDValidity(self):
        return self.uid_validity

    def getUIDNext(self):
        return self.next_uid

    def getUID(self, message):
        return self.messages[message - 1].uid

    def getMessageCount(self):
        return len(self.messages)

    def getRecentCount(self):
        return 0

    def getUnseenCount(self):
        return sum(1 for m in self.messages if "\\Seen" not in m.flags)

    def isWriteable(self):
        return True

    def destroy(self):
        self.messages = []

    def requestStatus(self, names):
        return imap4.statusRequestHelper(self, names)

    def addListener(self, listener):
        self.listeners.append(listener)

    def removeListener(self, listener):
        self.listeners.remove(listener)

    def addMessage(self, message, flags=(), date=None):
        raw = message.read() if hasattr(message, "read") else bytes(message)
        return defer.succeed(self.append(raw, flags, date))

    def append(self, raw: bytes, flags=(), date=None) -> int:
        """Store `raw` and return its UID (also used directly by the SMTP side)."""
        uid = self.next_uid
        self.next_uid += 1
        self.messages.append(StoredMessage(raw, uid, [_text(f) for f in flags], date))
        for listener in self.listeners:
            listener.newMessages(len(self.messages), None)
        return uid

    def copy(self, message):
        return self.append(message.raw, message.flags, message.date)

    def expunge(self):
        gone = [i + 1 for i, m in enumerate(self.messages) if "\\Deleted" in m.flags]
        self.messages = [m for m in self.messages if "\\Deleted" not in m.flags]
        return sorted(gone, reverse=True)

    def _select(self, messages, uid):
        if not self.messages:
            return []
        if uid:
            messages.last = self.messages[-1].uid
            return [(i + 1, m) for i, m in enumerate(self.messages) if m.uid in messages]
        messages.last = len(self.messages)
        return [(n, self.messages[n - 1]) for n in messages if 0 < n <= len(self.messages)]

    def fetch(self, messages, uid):
        return self._select(messages, uid)

    def store(self, messages, flags, mode, uid):
        if self.store_failures > 0:
            self.store_failures -= 1
            raise imap4.MailboxException("simulated failure while storing flags")
        flags = {_text(f) for f in flags}
        result = {}
        for seq, message in self._select(messages, uid):
            if mode == 0:
                message.flags = set(flags)
            elif mode > 0:
                message.flags |= flags
            else:
                message.flags -= flags
            result[seq] = message.getFlags()
        return result

    # -- ISearchableMailbox: the small subset the engine uses
    def search(self, query, uid):
        tokens = _flatten(query)
        return [i + 1 for i, m in enumerate(self.messages) if _matches(list(tokens), m)]


def _flatten(query) -> list:
    flat = []
    for token in query:
        flat += _flatten(token) if isinstance(token, list) else [token]
    return flat


def _matches(query: list, message: StoredMessage) -> bool:
    while query:
        key = _text(query.pop(0)).upper()
        if key in ("KEYWORD", "UNKEYWORD"):
            present = _text(query.pop(0)) in message.flags
            if present != (key == "KEYWORD"):
                return False
        elif key.startswith("UN") and "\\" + key[2:].capitalize() in SYSTEM_FLAGS:
            if "\\" + key[2:].capitalize() in message.flags:
                return False
        elif "\\" + key.capitalize() in SYSTEM_FLAGS:
            if "\\" + key.capitalize() not in message.flags:
                return False
    return True


class MailAccount(imap4.MemoryAccount):
    """One mailbox owner; INBOX always exists."""

    def __init__(self, name):
        super().__init__(name)
        self.addMailbox("INBOX")

    def _emptyMailbox(self, name, id):
        return MemoryMailbox(uid_validity=1000 + id)

    @property
    def inbox(self) -> MemoryMailbox:
        return self.mailboxes["INBOX"]

    def folder(self, name: str) -> MemoryMailbox | None:
        return self.mailboxes.get(name.upper())


# --------------------------------------------------------------------------- SMTP side


@implementer(smtp.IMessage)
class _IncomingMail:
    def __init__(self, operator: "MailOperator", recipient: str):
        self.operator, self.recipient, self.lines = operator, recipient, []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.operator.store(self.recipient, b"\r\n".join(self.lines) + b"\r\n")
        return defer.succeed(None)

    def connectionLost(self):
        self.lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, operator: "MailOperator"):
        self.operator = operator

    def receivedHeader(self, helo, origin, recipients):
        return b"Received: from " + helo[0] + b" by pfi-sim; " + email.utils.formatdate().encode()

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        address = str(user.dest).lower()
        if address in self.operator.rejected:
            raise smtp.SMTPBadRcpt(user, 550, "5.1.1 Mailbox unavailable")
        return lambda: _IncomingMail(self.operator, address)


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, operator: "MailOperator"):
        self.operator = operator

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if imap4.IAccount in interfaces:
            name = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
            return imap4.IAccount, self.operator.account(name), lambda: None
        if smtp.IMessageDelivery in interfaces:
            return smtp.IMessageDelivery, _Delivery(self.operator), lambda: None
        raise NotImplementedError(interfaces)


@dataclass
class MailOperator:
    """The whole fake operator: accounts by address, users, rejected recipients."""

    users: dict[str, str] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    allow_anonymous_smtp: bool = True
    accounts: dict[str, MailAccount] = field(default_factory=dict)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    envelope: list[str] = field(default_factory=list)  # MAIL FROM / RCPT TO lines, for tests

    def account(self, address: str) -> MailAccount:
        key = address.lower()
        if key not in self.accounts:
            self.accounts[key] = MailAccount(key)
        return self.accounts[key]

    def store(self, recipient: str, raw: bytes) -> None:
        self.received.append((recipient, raw))
        self.account(recipient).inbox.append(raw)

    def portal(self) -> portal.Portal:
        db = checkers.InMemoryUsernamePasswordDatabaseDontUse(**{u: p.encode() for u, p in self.users.items()})
        checks = [db]
        if self.allow_anonymous_smtp:
            checks.append(checkers.AllowAnonymousAccess())
        return portal.Portal(_Realm(self), checks)


class _SmtpServer(smtp.ESMTP):
    def connectionMade(self):
        set_no_delay(self.transport)
        super().connectionMade()

    def extensions(self):
        ext = super().extensions()
        ext[b"DSN"] = None  # parameters are accepted and recorded, no DSN is generated
        return ext

    def lineReceived(self, line):
        if self.mode == smtp.COMMAND and line[:9].upper() in (b"MAIL FROM", b"RCPT TO:<"):
            self.factory.operator.envelope.append(line.decode("utf-8", "replace"))
        return super().lineReceived(line)


class _SmtpFactory(smtp.SMTPFactory):
    def __init__(self, operator: MailOperator, starttls_context):
        super().__init__(operator.portal())
        self.operator, self.starttls_context = operator, starttls_context

    def buildProtocol(self, addr):
        proto = _SmtpServer(
            {b"LOGIN": imap4.LOGINCredentials, b"PLAIN": imap4.PLAINCredentials},
            self.starttls_context,
        )
        proto.factory, proto.portal, proto.host = self, self.portal, b"pfi-sim"
        return proto


class _ImapServer(imap4.IMAP4Server):
    def connectionMade(self):
        set_no_delay(self.transport)
        super().connectionMade()


class _ImapServerFactory(Factory):
    """Builds IMAP4Server protocols bound to the operator's portal."""

    def __init__(self, operator: MailOperator):
        self.portal = operator.portal()

    def buildProtocol(self, addr):
        server = _ImapServer({b"LOGIN": imap4.LOGINCredentials, b"PLAIN": imap4.PLAINCredentials})
        server.portal, server.factory = self.portal, self
        return server


def smtp_factory(operator: MailOperator, tls_options, implicit: bool):
    """SMTP server factory: implicit TLS wraps the whole connection, else STARTTLS is offered."""
    if implicit:
        return TLSMemoryBIOFactory(tls_options, False, _SmtpFactory(operator, None))
    return _SmtpFactory(operator, tls_options)


def imap_factory(operator: MailOperator, tls_options):
    """IMAP server factory over implicit TLS."""
    return TLSMemoryBIOFactory(tls_options, False, _ImapServerFactory(operator))
