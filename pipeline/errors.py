"""One base error for spoolsweep, with named subclasses whose docstrings are their messages."""

from __future__ import annotations


class SpoolsweepError(Exception):
    """spoolsweep failed."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        doc = (type(self).__doc__ or "").strip()
        super().__init__(f"{doc} {detail}".strip())


class PolicyError(SpoolsweepError):
    """The site policy is not valid:"""


class SnapshotError(SpoolsweepError):
    """The snapshot cannot be read:"""


class ArchiveLimitExceeded(SnapshotError):
    """The snapshot exceeds a safety limit (possible decompression bomb):"""


class UnknownFormat(SnapshotError):
    """The queue format could not be recognised; name it with --format:"""


class OutputError(SpoolsweepError):
    """The output folder cannot be written:"""


class WrongFormat(SnapshotError):
    """The snapshot is not in the format named:"""


class StoreError(SpoolsweepError):
    """The store refused the operation:"""


class ManifestError(SpoolsweepError):
    """The manifest cannot be read whole (nothing is approved or dispatched from it):"""


class ShardError(SpoolsweepError):
    """The parsed shard cannot be read:"""


class InstructionRefused(SpoolsweepError):
    """The instruction was refused:"""


class CorpusNotFound(SpoolsweepError, FileNotFoundError):
    """No SpamAssassin corpus (easy_ham_1/ and spam_1/ .eml files, a folder or tarball) at"""


class PoisonEvent(SpoolsweepError):
    """The event can never succeed and goes to the dead-letter queue:"""


class NotReady(SpoolsweepError):
    """An object this step needs is not there yet; the event is retried:"""


class TriageStepError(SpoolsweepError):
    """The triage step cannot run:"""
