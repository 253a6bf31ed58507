"""Request fields every console route checks the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from pipeline.text import has_unsafe


def _plain(value: str) -> str:
    if has_unsafe(value):
        raise ValueError("must not contain control or bidi characters (they garble or disguise the audit trail)")
    return value


# who decided: shown in the log and written into the approval, so one plain line, the same rule everywhere
Who = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_plain)]
