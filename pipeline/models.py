"""The models that cross a boundary: envelopes, parsed records, verdicts, campaigns, the manifest."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

SCHEMA_VERSION = "1"
M = TypeVar("M", bound="BaseModel")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    def __reduce__(self) -> tuple[Any, ...]:
        # Triage's parse workers take every message (a Found, with its RawMessage and Envelope) and give
        # back every record by pickle: pydantic's own pickling (copyreg, __getstate__ with the set of
        # fields set, __setstate__) is a quarter of that traffic's cost. The fields' dict as it is, and the
        # fields set only when it is not all of them; anything else the default way.
        if self.__pydantic_extra__ is not None or self.__pydantic_private__ is not None:
            return _restore_state, (type(self), self.__getstate__())
        d = self.__dict__
        fields_set = self.__pydantic_fields_set__
        return _restore, (type(self), d, None if len(fields_set) == len(d) else tuple(fields_set))


def _restore(cls: type[Model], values: dict[str, Any], fields_set: tuple[str, ...] | None) -> Model:
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values) if fields_set is None else set(fields_set))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def _restore_state(cls: type[Model], state: dict[Any, Any]) -> Model:
    m = cls.__new__(cls)
    m.__setstate__(state)
    return m


class Verdict(StrEnum):
    valid = "valid"
    spam = "spam"
    review = "review"


class Envelope(Model):
    """What the MTA knew about a message, named after the SMTP words."""

    mail_from: str | None = Field(None, description="MAIL FROM; '' is the null sender <>; None if unknown")
    rcpt_to: list[str] = Field(default_factory=list, description="recipients still to deliver")
    done_rcpt_to: list[str] = Field(default_factory=list, description="recipients already delivered")
    orig_rcpt_to: list[str] = Field(default_factory=list, description="original recipients before aliasing")
    client_address: str | None = None
    client_name: str | None = None
    helo: str | None = None
    protocol: str | None = None
    sasl_method: str | None = None
    sasl_username: str | None = None
    arrival_time: datetime | None = None
    queue_name: str | None = None
    queue_id: str | None = None
    deferred_reason: str | None = None


class RawMessage(Model):
    """One message as a reader found it: the RFC 822 bytes are carried beside, not in, the model."""

    path: str
    envelope: Envelope = Field(default_factory=Envelope)
    defects: list[str] = Field(default_factory=list)
    format: str = "eml"
    mta: str | None = Field(None, description="the MTA a canonical snapshot was taken from (its meta's `mta`)")


class DefectKind(StrEnum):
    """What a defect puts in doubt. Defects are kept as lines of text (the manifest's `defects`); a MIME
    defect is written `mime: <what>` (mime_defect), any other line is an integrity defect."""

    integrity = "integrity"  # from the archive or the reader: the bytes themselves are in doubt
    mime = "mime"  # the MIME structure, which the parser read around: not blocking


MIME_PREFIX = "mime: "


def mime_defect(what: str) -> str:
    """The line that records a MIME defect."""
    return MIME_PREFIX + what


def defect_kind(defect: str) -> DefectKind:
    return DefectKind.mime if defect.startswith(MIME_PREFIX.rstrip()) else DefectKind.integrity


def integrity_defects(defects: list[str]) -> list[str]:
    """The defects that put the message's bytes in doubt, in order."""
    return [d for d in defects if defect_kind(d) is DefectKind.integrity]


class ReceivedHop(Model):
    from_name: str | None = None
    from_ip: str | None = None
    by: str | None = None
    protocol: str | None = None
    authenticated: bool = False
    auth_user: str | None = None


class ParsedRecord(Model):
    """One message after parsing: everything triage needs, nothing that must be re-read."""

    path: str
    sha256: str
    size: int
    format: str
    envelope: Envelope
    mta: str | None = None
    message_id: str | None = None
    subject: str = ""
    from_header: str = ""
    to_header: str = ""
    date: datetime | None = None
    content_type: str = ""
    text: str = Field("", description="normalised subject + body used for campaign grouping")
    sketch: list[int] = Field(default_factory=list, description="MinHash of the text (pipeline.features)")
    keys: list[str] = Field(default_factory=list, description="invariants a spam run repeats: URL domains and "
                            "paths, Reply-To, attachment and image digests")
    shape: str = Field("", description="fingerprint of the template: header order, X-Mailer, content type")
    attachments: list[str] = Field(default_factory=list)
    received: list[ReceivedHop] = Field(default_factory=list)
    our_hop: ReceivedHop | None = None
    list_unsubscribe: bool = False
    list_id: str = Field("", description="the list identifier of its List-Id header (RFC 2919: between < and >), "
                         "lower-cased; '' without one")
    precedence_bulk: bool = False
    auto_submitted: bool = False
    bounce: bool = False
    evasion: list[str] = Field(default_factory=list, description="ways its own words are broken to slip past "
                               "content filters (pipeline.normalise.evasion); none for a bounce")
    bounced_original_text: str = ""
    bounced_original_sender: str | None = None
    bounced_original_received: list[ReceivedHop] = Field(
        default_factory=list, description="the topmost Received hops of the message a bounce quotes, newest first")
    defects: list[str] = Field(default_factory=list)
    envelope_inferred: list[str] = Field(default_factory=list, description="envelope fields read from headers")
    id: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        # The parser fills a record field by field, fifteen times a message, a million times a run;
        # assignment is not validated (as in any pydantic model without validate_assignment), so
        # pydantic's generic path is only overhead here.
        d = self.__dict__
        if name in d:
            d[name] = value
            self.__pydantic_fields_set__.add(name)
        else:
            super().__setattr__(name, value)


def construct_all(cls: type[M], **values: Any) -> M:
    """An instance from values that are already valid, naming every field (checked): what pydantic's
    model_construct does, without its per-field default handling, which triage would pay per message."""
    if values.keys() != cls.__pydantic_fields__.keys():
        raise TypeError(f"{cls.__name__}: construct_all needs every field; got {sorted(values)}")
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def message_id(path: str, sha256: str) -> str:
    """A short stable id for a message: where it was and what it was."""
    return hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:24]


class ReasonCode(StrEnum):
    """Every reason a verdict gives, by the rule that gave it (pipeline.verdicts: MESSAGE_RULES, CAMPAIGN_RULES)."""

    # a message's own rules
    defect = "defect"
    no_recipients = "no_recipients"
    backscatter_local = "backscatter_local"
    bounce_to_local = "bounce_to_local"
    bounce_to_local_unproven = "bounce_to_local_unproven"
    backscatter = "backscatter"
    bounce_external = "bounce_external"
    contradiction = "contradiction"
    inbound_in_spam_campaign = "inbound_in_spam_campaign"
    own_bounce_in_spam_campaign = "own_bounce_in_spam_campaign"
    relayed_unknown_source = "relayed_unknown_source"
    relayed = "relayed"
    stolen_account_source = "stolen_account_source"
    compromised_account = "compromised_account"
    authenticated = "authenticated"
    forged_local_sender = "forged_local_sender"
    trusted_origin = "trusted_origin"
    inbound = "inbound"
    mixed_recipients = "mixed_recipients"
    origin_unknown = "origin_unknown"
    # a campaign's rules
    relayed_single_source = "relayed_single_source"
    relayed_campaign = "relayed_campaign"
    relayed_unattributed = "relayed_unattributed"
    stolen_account = "stolen_account"
    backscatter_campaign = "backscatter_campaign"
    authenticated_bulk = "authenticated_bulk"
    authenticated_bulk_unclear = "authenticated_bulk_unclear"
    trusted_bulk = "trusted_bulk"
    inbound_bulk = "inbound_bulk"
    campaign_unclear = "campaign_unclear"
    # notes beside a verdict (weight `info`)
    mime_defects = "mime_defects"
    envelope_inferred = "envelope_inferred"
    mixed = "mixed"


class Reason(Model):
    code: ReasonCode = Field(description="machine-readable reason, e.g. 'relayed', 'backscatter'")
    text: str = Field(description="the reason in words an admin reads")
    weight: Literal["spam", "valid", "review", "info"] = "info"


class ManifestMessage(Model):
    id: str
    path: str
    sha256: str
    size: int
    format: str
    queue_id: str | None = None
    queue_name: str | None = None
    envelope: Envelope
    subject: str
    from_header: str = ""
    message_id: str | None = None
    campaign: int | None = None
    verdict: Verdict
    confidence: float = Field(ge=0.0, le=1.0)
    reasons: list[Reason]
    defects: list[str] = Field(default_factory=list)
    envelope_inferred: list[str] = Field(default_factory=list)
    attachments: list[str] = Field(default_factory=list)
    review_group: int | None = Field(None, description="the review group of a message held for review (id in "
                                     "Manifest.review_groups); None for valid and spam")


class Spread(Model):
    """How many distinct values, and the commonest ones with counts."""

    distinct: int
    top: list[tuple[str, int]]


class Campaign(Model):
    id: int
    size: int
    label: str = Field(description="shared normalised terms of the campaign's text: for search, not for reading")
    subject: str = Field("", description="the campaign's most typical subject, per-copy tokens left out")
    phrase: str = Field("", description="a short phrase most members' text shares")
    sample_subjects: list[str]
    sender_domains: Spread
    recipient_domains: Spread
    client_ips: Spread
    accounts: Spread
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    verdict: Verdict
    confidence: float
    reasons: list[Reason]


class ReviewGroup(Model):
    """Messages held for review by the same rule on the same evidence: one decision for all of them."""

    id: int
    rule: ReasonCode = Field(description="the reason code that held these messages ('mixed': several small rules)")
    shared: dict[str, str] = Field(description="evidence every member shares, e.g. {'client address': "
                                   "'198.51.100.80'}; empty when only the rule is shared")
    summary: str = Field(description="the group in a sentence an admin understands")
    messages: int
    campaigns: list[int] = Field(description="campaigns its members belong to, commonest first (at most 20)")
    client_ips: Spread
    sender_domains: Spread
    recipient_domains: Spread
    accounts: Spread
    sample_ids: list[str]
    sample_subjects: list[str]
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    suggested: Verdict = Field(description="the engine's suggested decision for the whole group")
    suggested_reason: str


class AccountReport(Model):
    """Who fed the queue: an authenticated account or an unauthenticated client."""

    account: str
    messages: int
    external_recipients: int
    client_ips: int
    top_client_ips: list[tuple[str, int]]
    campaigns: list[int]
    spam: int
    compromised: bool
    summary: str


class SourceReport(Model):
    client_ip: str
    messages: int
    spam: int
    accounts: list[str]


class Totals(Model):
    messages: int
    valid: int
    spam: int
    review: int
    bytes: int
    campaigns: int


class SnapshotInfo(Model):
    source: str
    format: str
    sha256: str | None = None
    hosts: list[str] = Field(default_factory=list, description="the mail hosts the snapshot's shards came from")
    members_read: int = 0
    skipped: list[str] = Field(default_factory=list, description="files that are not messages (logs, pid files)")

    @model_validator(mode="before")
    @classmethod
    def _hosts_of_old_manifests(cls, data: Any) -> Any:
        """A manifest written before `hosts` named them in one string, "mx1, mx2", under `host`."""
        if isinstance(data, dict) and "host" in data and "hosts" not in data:
            data = dict(data)
            old = data.pop("host")
            data["hosts"] = [h.strip() for h in old.split(",") if h.strip()] if isinstance(old, str) else (old or [])
        return data


class PolicyInfo(Model):
    """Which site policy triage used, and where each of its values came from."""

    source: str = Field(description="in words: the file, the MTA's own configuration, the queue")
    values: dict[str, list[str]] = Field(description="local_domains, server_names, ... as used")
    origins: dict[str, str] = Field(description="per key: where its value came from")
    notes: list[str] = Field(default_factory=list, description="values left out, and why")


class ManifestPart(Model):
    """One part of a manifest's messages: a Parquet file beside manifest.json."""

    key: str = Field(pattern=r"^messages-[0-9]{5}\.parquet$",
                     description="where it is, relative to the folder manifest.json is in")
    first: int = Field(ge=0, description="the position of its first message in the manifest's message order")
    messages: int = Field(ge=1)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the part's bytes: read nothing else")


class ManifestParts(Model):
    """Where a summary's messages are: parts in message order, each a Parquet table of one row per message
    whose `message` column holds the message exactly as `messages` would (ManifestMessage JSON)."""

    format: Literal["parquet"] = "parquet"
    per_part: int = Field(ge=1, description="messages in every part but the last")
    columns: list[str] = Field(description="the table's columns; `message` is the whole message, the others "
                               "copies of its fields to filter on without reading it")
    items: list[ManifestPart]


class Manifest(Model):
    schema_version: str = SCHEMA_VERSION
    incident: str
    snapshot: SnapshotInfo
    policy_sha256: str
    policy: PolicyInfo | None = None
    warnings: list[str] = Field(default_factory=list, description="read these before approving")
    totals: Totals
    campaigns: list[Campaign]
    accounts: list[AccountReport]
    sources: list[SourceReport]
    messages: list[ManifestMessage] = Field(
        default_factory=list, description="every message, in one file; absent from a summary, whose `parts` "
        "name the files that hold them (pipeline.manifest_io.ManifestReader reads both)")
    parts: ManifestParts | None = Field(None, exclude=True, description="a summary's message parts (written by "
                                        "pipeline.manifest_io; a manifest in one file has none)")
    review_groups: list[ReviewGroup] = Field(default_factory=list, description="every review message is in "
                                             "exactly one; at most one group per 20 review messages plus 10")
    archive_defects: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _summary_read_as_a_summary(self, info: ValidationInfo) -> Manifest:
        # a summary read as a whole manifest would be one with no messages: approving that purges nothing and
        # replays nothing, silently. Only the reader, which reads the parts too, may take one.
        if self.parts is not None:
            if self.messages:
                raise ValueError("a manifest has its messages inline or in parts, not both")
            if not (info.context or {}).get("summary"):
                raise ValueError("this manifest.json is a summary whose messages are in parts; "
                                 "read it with pipeline.manifest_io.ManifestReader")
        return self


class IndexEntry(Model):
    """One line of a canonical snapshot's index.jsonl."""

    id: str | None = None
    path: str
    sha256: str
    size: int
    envelope: Envelope = Field(default_factory=Envelope)
    defects: list[str] | None = Field(None, description=(
        "what was found wrong with the message in the snapshot a part was cut from (pipeline.shards): "
        "the part carries it on, so its reader says it again (left out when there is none)"))
