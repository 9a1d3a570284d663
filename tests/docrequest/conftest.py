"""Helpers: the fictional MDM sample and small, explicit edits of it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine.docrequest import DocumentRequest, parse_document_request
from engine.hl7 import Message

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Sample:
    """An editable copy of samples/mdm_t02_fictional.hl7 (segments as a list of strings)."""

    def __init__(self):
        text = (SAMPLES / "mdm_t02_fictional.hl7").read_bytes().decode("utf-8")
        self.lines = [line for line in text.split("\r") if line]
        self.cda = (SAMPLES / "cda_cr_imagerie_fictional.xml").read_text("utf-8")

    def index(self, name: str, occurrence: int = 1) -> int:
        found = [i for i, line in enumerate(self.lines) if line.startswith(name + "|")]
        return found[occurrence - 1]

    def set(self, name: str, field: int, value: str, occurrence: int = 1) -> "Sample":
        i = self.index(name, occurrence)
        fields = self.lines[i].split("|")
        position = field - 1 if name == "MSH" else field
        fields += [""] * (position + 1 - len(fields))
        fields[position] = value
        self.lines[i] = "|".join(fields)
        return self

    def drop(self, name: str, occurrence: int = 1) -> "Sample":
        del self.lines[self.index(name, occurrence)]
        return self

    def meta(self, code: str) -> int:
        """OBX occurrence number of a MetaDMPMSS row."""
        obx = [line for line in self.lines if line.startswith("OBX|")]
        return next(n for n, line in enumerate(obx, 1) if f"|{code}^" in line)

    def with_cda(self, cda: str) -> "Sample":
        data = base64.b64encode(cda.encode("utf-8")).decode()
        return self.set("OBX", 5, f"^text^XML^Base64^{data}")

    def replace_cda(self, old: str, new: str) -> "Sample":
        assert old in self.cda, old
        self.cda = self.cda.replace(old, new)
        return self.with_cda(self.cda)

    def as_replacement(self, replaced_id: str = "1.2.250.1.999.7.1.2026.0") -> "Sample":
        self.set("MSH", 9, "MDM^T10^MDM_T02").set("ORC", 1, "RO").set("OBX", 11, "C")
        return self.set("TXA", 13, replaced_id)

    def text(self) -> str:
        return "\r".join(self.lines) + "\r"

    def message(self) -> Message:
        return Message.parse(self.text().encode("utf-8"))

    def request(self) -> DocumentRequest:
        return parse_document_request(self.message())


@pytest.fixture
def sample() -> Sample:
    return Sample()
