"""PFI engine: an HL7v2/CDA integration engine for French medical imaging."""

__version__ = "0.1.0"
