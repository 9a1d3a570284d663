"""HTTPS with mutual TLS (Twisted Agent + client-certificate policy) and fault classification."""

from __future__ import annotations

import io
from dataclasses import dataclass

from OpenSSL import SSL, crypto
from twisted.internet import defer, error as net_error, ssl
from twisted.web import client as web_client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from engine.dmp.config import DmpChannelSettings, OrgCertificate
from engine.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from engine.tls import client_options, pem_blocks

#: TLS alerts that mean "your certificate is refused": retrying cannot help until an operator
#: installs a valid organisation certificate, so the DMP queue pauses (see docs/dmp.md).
#: "decrypt error": the server could not verify our certificate's signature (a certificate from
#: a CA that has the trusted CA's name but not its key) or our CertificateVerify.
CERT_REFUSED_MARKERS = (
    "certificate expired",
    "unknown ca",
    "bad certificate",
    "certificate required",
    "certificate unknown",
    "certificate revoked",
    "handshake failure",
    "unsupported certificate",
    "decrypt error",
)


class DmpTransientError(TransientDeliveryError):
    """Transient transport failure with a code."""

    def __init__(self, code: str, reason: str):
        self.code = code
        super().__init__(f"{code}: {reason}")


class DmpPermanentError(PermanentDeliveryError):
    """Permanent transport failure with a code."""

    def __init__(self, code: str, reason: str):
        self.code = code
        super().__init__(f"{code}: {reason}")


@implementer(IPolicyForHTTPS)
class ClientCertificatePolicy:
    """Trust only the configured CA bundle and present the organisation certificate."""

    def __init__(self, trust_root, client_certificate: ssl.PrivateCertificate):
        self._trust = trust_root
        self._client = client_certificate

    def creatorForNetloc(self, hostname: bytes, port: int):  # noqa: N802 (Twisted API)
        """TLS connection creator for one host."""
        return client_options(hostname.decode("ascii"), self._trust, self._client)


def load_policy(settings: DmpChannelSettings, certificate: OrgCertificate | None = None) -> ClientCertificatePolicy:
    """Read the CA bundle and the client key pair (`certificate`, default: the channel's first);
    ConfigurationError if unreadable."""
    certificate = certificate or settings.organisation_certificates()[0]
    try:
        bundle = settings.ca_bundle.read_bytes()
        pem = certificate.cert.read_bytes() + b"\n" + certificate.key.read_bytes()
        cas = [ssl.Certificate.loadPEM(block) for block in pem_blocks(bundle)]
        client_cert = ssl.PrivateCertificate.loadPEM(pem)
    except (OSError, SSL.Error, crypto.Error, ValueError) as exc:
        raise ConfigurationError([f"DMP channel TLS material unreadable: {exc}"]) from exc
    if not cas:
        raise ConfigurationError([f"no certificate in CA bundle {settings.ca_bundle}"])
    return ClientCertificatePolicy(ssl.trustRootFromCertificates(cas), client_cert)


@dataclass
class HttpResponse:
    """Status, content type and body of an HTTP answer."""

    code: int
    content_type: str
    body: bytes


class HttpsPoster:
    """POSTs bodies over mutual TLS with connect and response timeouts."""

    def __init__(self, reactor, settings: DmpChannelSettings, certificate: OrgCertificate | None = None):
        self._reactor = reactor
        self._timeout = settings.response_timeout
        pool = web_client.HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        self._pool = pool
        self._agent = web_client.Agent(
            reactor,
            contextFactory=load_policy(settings, certificate),
            connectTimeout=settings.connect_timeout,
            pool=pool,
        )

    async def post(self, url: str, content_type: str, body: bytes) -> HttpResponse:
        """POST and read the whole answer; raise DmpTransientError / DmpPermanentError."""
        headers = Headers({b"Content-Type": [content_type.encode()], b"User-Agent": [b"PFI-engine DMP connector"]})
        try:
            response = await self._timed(
                self._agent.request(b"POST", url.encode(), headers, web_client.FileBodyProducer(_bytes_io(body)))
            )
            data = await self._timed(web_client.readBody(response))
        except Exception as exc:  # every network failure is classified, never re-raised raw
            raise classify(exc) from exc
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
        return HttpResponse(response.code, ctype, data)

    def _timed(self, deferred: defer.Deferred) -> defer.Deferred:
        return deferred.addTimeout(self._timeout, self._reactor)

    async def close(self) -> None:
        """Close pooled connections (tests, shutdown)."""
        await self._pool.closeCachedConnections()


def _bytes_io(body: bytes) -> io.BytesIO:
    return io.BytesIO(body)


def classify(exc: BaseException) -> Exception:
    """Map a network failure to a transient or permanent coded error."""
    tls = _tls_error_text(exc)
    if tls is not None:
        if "certificate verify failed" in tls:
            return DmpPermanentError("TLS_SERVER_UNTRUSTED", f"DMP server certificate not trusted: {tls}")
        if any(marker in tls for marker in CERT_REFUSED_MARKERS):
            return DmpPermanentError("TLS_CLIENT_CERT_REFUSED", f"the DMP refused the organisation certificate: {tls}")
        return DmpTransientError("TLS_ERROR", tls)
    timeouts = (defer.TimeoutError, defer.CancelledError, net_error.TimeoutError)
    if isinstance(exc, timeouts) or any(isinstance(r, timeouts) for r in _nested(exc)):
        return DmpTransientError("TIMEOUT", "no answer from the DMP in time")
    if isinstance(exc, net_error.ConnectionRefusedError):
        return DmpTransientError("CONNECTION_REFUSED", "DMP endpoint refused the connection")
    return DmpTransientError("CONNECTION_FAILED", f"{type(exc).__name__}: {_reasons(exc)}")


def _nested(exc: BaseException) -> list[BaseException]:
    reasons = getattr(exc, "reasons", None)
    if not reasons:
        return [exc]
    return [r.value if hasattr(r, "value") else r for r in reasons]


def _reasons(exc: BaseException) -> str:
    return "; ".join(str(r) for r in _nested(exc)) or repr(exc)


def _tls_error_text(exc: BaseException) -> str | None:
    for inner in _nested(exc):
        if isinstance(inner, SSL.Error):
            return str(inner).lower()
    return None
