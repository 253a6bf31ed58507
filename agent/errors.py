"""The agent's errors: named subclasses of the one SpoolsweepError base."""

from __future__ import annotations

from pipeline.errors import SpoolsweepError


class AgentError(SpoolsweepError):
    """The agent failed:"""


class MtaError(AgentError):
    """The MTA command failed:"""


class FreezeError(AgentError):
    """The queue could not be frozen:"""


class SnapshotExists(AgentError):
    """A snapshot for this incident already exists (use a new incident name):"""


class UploadError(AgentError):
    """The snapshot upload failed; the local copy is kept:"""


class JournalError(AgentError):
    """The journal cannot be used:"""
