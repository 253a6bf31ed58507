"""The errors of the function layer, under spoolsweep's one base error."""

from __future__ import annotations

from pipeline.errors import SpoolsweepError


class PoisonEvent(SpoolsweepError):
    """The event can never succeed and goes to the dead-letter queue:"""


class NotReady(SpoolsweepError):
    """An object this step needs is not there yet; the event is retried:"""


class SettingsError(SpoolsweepError):
    """The function's settings are not valid:"""
