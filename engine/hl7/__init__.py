"""HL7 v2: fast header scanning for intake (scan), ACKs (ack), the full message model (message)
and the path syntax (path) used by routes and document requests."""

from engine.hl7.message import Encoding, Message, Segment, escape, unescape
from engine.hl7.path import HL7Path, compile_path

__all__ = ["Encoding", "HL7Path", "Message", "Segment", "compile_path", "escape", "unescape"]
