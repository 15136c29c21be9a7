"""An emulated WellSky tenant: real HTTP, SFTP and portal on loopback, deterministic synthetic data."""
