"""HL7 v2 message model (engine.hl7.message) and path syntax (engine.hl7.path)."""

from engine.hl7.message import Encoding, Message, Segment, escape, unescape
from engine.hl7.path import HL7Path, compile_path

__all__ = ["Encoding", "HL7Path", "Message", "Segment", "compile_path", "escape", "unescape"]
