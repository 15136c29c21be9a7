"""Shared core of tap-wellsky and target-wellsky: auth, transport, channels and canonical records."""
