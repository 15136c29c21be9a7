"""Channels: the ways WellSky data can be reached (REST, FHIR R4, HL7 over SFTP, exports, portal)."""
