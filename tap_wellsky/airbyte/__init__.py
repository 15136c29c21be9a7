"""source-wellsky: the Airbyte protocol face of the connector, over the same core and stream definitions as the tap.

``protocol.py`` builds the typed protocol messages and reads the config, catalog and state files;
``commands.py`` runs spec, check, discover and read.

``source-wellsky spec|check|discover|read --config F [--catalog F] [--state F]`` writes one Airbyte message per
line on stdout (and nothing else: logging becomes LOG messages). Records come from the same
``Connection.channel(stream).iter_records`` the Singer tap reads, schemas from ``stream_schema`` and keys from
``ENTITIES``, so the two faces cannot disagree about what a stream is.

State is per stream (``{"type": "STREAM", "stream": {"stream_descriptor": {"name": ...}, "stream_state":
{"updated_at": ...}}}``). On an ordered channel a checkpoint follows every page's worth of records and only
names an ``updated_at`` already emitted, so a sync killed at any point resumes without losing a record
(``updated_since`` is inclusive: records at the bookmark itself come again — at least once, never lost).
Unordered channels checkpoint once, at the end of the stream.

Exit codes: 0 on success (``check`` exits 0 with a FAILED status, as the protocol expects), 1 when a stream
or the command failed (a TRACE error names why), 2 for a bad command line.
"""

from .commands import main, run

__all__ = ["main", "run"]
