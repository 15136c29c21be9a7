"""target-wellsky: a Singer target that writes patients and appointments back to WellSky."""
