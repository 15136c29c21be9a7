"""Normalization of each product's native shapes (and FHIR / HL7) into canonical records."""
