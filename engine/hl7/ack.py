"""Technical ACKs in HL7 original mode, as the ANS volets use them (digest §c).

MSH mirrors the acknowledged message (3<->5, 4<->6, same MSH-11, MSH-12, MSH-17, MSH-18, no
MSH-21); MSA-2 echoes MSH-10; ERR explains AE/AR with an HL7 table 0357 code.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.hl7.scan import Header

# HL7 table 0357 (the subset the ANS volets list, plus 205/206 from the base standard).
ERROR_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    198: "Non-conformant cardinality",
    199: "Other HL7 error",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: where (ERR-2), what (ERR-3, table 0357), why for humans (ERR-8)."""

    code: int
    location: str = ""
    message: str = ""
    app_code: str = ""  # ERR-5 "code^label^system", only with code 207
    severity: str = "E"

    def segment(self, enc: str, fs: str = "|") -> str:
        comp = enc[0]
        err3 = f"{self.code}{comp}{ERROR_TEXT.get(self.code, 'Error')}{comp}HL70357"
        loc = self.location.replace("^", comp)
        fields = ["ERR", "", loc, err3, self.severity, self.app_code, "", "", escape(self.message, enc, fs)]
        return fs.join(fields).rstrip(fs)


def escape(text: str, enc: str, fs: str = "|") -> str:
    """HL7-escape free text so it can sit in a field."""
    esc = enc[2] if len(enc) > 2 else "\\"
    out = text.replace(esc, f"{esc}E{esc}").replace(fs, f"{esc}F{esc}")
    out = out.replace(enc[0], f"{esc}S{esc}")
    if len(enc) > 1:
        out = out.replace(enc[1], f"{esc}R{esc}")
    if len(enc) > 3:
        out = out.replace(enc[3], f"{esc}T{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(
    header: Header | None,
    code: str,
    ack_control_id: str,
    timestamp: str,
    errors: tuple[AckError, ...] = (),
    local_app: str = "PFI",
    codec: str = "utf-8",
) -> bytes:
    """Build the ACK for `header` (None when the input had no usable MSH)."""
    h = header or Header(version_field="2.5", processing_id="P")
    fs, enc = h.field_sep, h.encoding_chars
    trigger = h.trigger if h.trigger and h.message_code != "ACK" else ""
    msg_type = f"ACK{enc[0]}{trigger}{enc[0]}ACK" if trigger else "ACK"
    msh = [
        "MSH", enc, h.receiving_app or local_app, h.receiving_facility, h.sending_app,
        h.sending_facility, timestamp, "", msg_type, ack_control_id, h.processing_id or "P",
        h.version_field or "2.5", "", "", "", "", h.country, h.charset,
    ]
    segments = [fs.join(msh).rstrip(fs), fs.join(["MSA", code, h.control_id])]
    segments += [e.segment(enc, fs) for e in errors]
    return ("\r".join(segments) + "\r").encode(h.codec if header else codec, errors="replace")
