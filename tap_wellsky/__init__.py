"""tap-wellsky: a Singer tap for the WellSky EHR."""
