"""The errors of the function layer, under spoolsweep's one base error (the step errors are the service layer's)."""

from __future__ import annotations

from pipeline.errors import NotReady, PoisonEvent, SpoolsweepError

__all__ = ["NotReady", "PoisonEvent", "SettingsError"]


class SettingsError(SpoolsweepError):
    """The function's settings are not valid:"""
