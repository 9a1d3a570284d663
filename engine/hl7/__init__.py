"""HL7 v2: fast header scanning for intake, ACK building, full parsing for later stages."""
