"""Approvals, signed requeue instructions and receipts: what crosses from the review to the mail host."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.errors import InstructionRefused
from pipeline.models import Envelope, Manifest, Verdict

if TYPE_CHECKING:
    from pipeline.manifest_io import ManifestReader


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApprovedMessage(Strict):
    """A message named by both identities: where it is and what its bytes are."""

    id: str
    path: str
    sha256: str
    queue_id: str | None = None
    envelope: Envelope | None = None


class Approval(Strict):
    """Who approved what: immutable once written to approvals/<incident>/<id>.json."""

    approval_id: str
    incident: str
    host: str
    manifest_sha256: str
    approved_by: str
    approved_at: datetime
    # before the lists: dispatch reads everything up to them without parsing a million messages
    changes: list[dict[str, Any]] = Field(default_factory=list, description="verdict changes made during review")
    replay: list[ApprovedMessage]
    purge: list[ApprovedMessage]
    hold: list[ApprovedMessage] = Field(default_factory=list, description="left frozen for a human (review)")


class Instruction(Strict):
    """What the agent will do; valid only with a good signature, for this host, before expiry, once."""

    instruction_id: str
    incident: str
    host: str
    approval_id: str
    # a naive time cannot be compared with the agent's clock: refused at parse, not a TypeError later
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    replay: list[ApprovedMessage]
    purge: list[ApprovedMessage]
    quarantine: bool = True


class SignedInstruction(Strict):
    payload: str = Field(description="the Instruction as canonical JSON")
    signature: str = Field(description="base64 Ed25519 signature over payload's UTF-8 bytes")
    key_id: str


class Outcome(StrEnum):
    replayed = "replayed"
    purged = "purged"
    missing = "missing"
    failed = "failed"
    refused = "refused"


class ReceiptItem(Strict):
    id: str
    sha256: str
    outcome: Outcome
    detail: str = ""


class Receipt(Strict):
    instruction_id: str
    incident: str
    host: str
    started_at: datetime
    finished_at: datetime | None = None
    refused: str | None = None
    items: list[ReceiptItem] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {o.value: 0 for o in Outcome}
        for it in self.items:
            out[it.outcome.value] += 1
        return out


def canonical_json(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


Decisions = tuple[dict[int, Verdict], dict[int, Verdict], dict[str, Verdict]]


def standing_decisions(changes: list[dict[str, Any]]) -> Decisions:
    """(campaign, review group, message) -> verdict: what a decision log (oldest first) leaves standing.

    The last decision for a target stands, and one whose verdict is None undoes the standing one for its
    target. ValueError if an entry is malformed."""
    standing: dict[str, dict[Any, Verdict]] = {"campaign": {}, "group": {}, "message": {}}
    for i, c in enumerate(changes):
        try:
            kind, target, verdict = c["kind"], c["target"], c["verdict"]
            if kind not in standing:
                raise ValueError(f"kind {kind!r}")
            if kind == "message":
                if not isinstance(target, str):
                    raise ValueError(f"target {target!r}")
                key: object = target
            else:
                key = int(target)
            if verdict is None:
                standing[kind].pop(key, None)
            else:
                standing[kind][key] = Verdict(verdict)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"decision {i} is malformed: {e}") from None
    return standing["campaign"], standing["group"], standing["message"]


Row = tuple[str, Verdict, int | None, int | None]  # (id, triage verdict, campaign, review group)


def effective_over(rows: Iterable[Row], decided: Decisions) -> dict[str, Verdict]:
    """The verdicts standing decisions set that differ from triage, over (id, verdict, campaign, group) rows."""
    camp, grp, msg = decided
    out: dict[str, Verdict] = {}
    if not camp and not grp and not msg:
        return out
    for mid, verdict, campaign, group in rows:
        v = (msg.get(mid) or (grp.get(group) if group is not None else None)
             or (camp.get(campaign) if campaign is not None else None))
        if v is not None and v is not verdict:
            out[mid] = v
    return out


def effective_verdicts(manifest: Manifest | ManifestReader, changes: list[dict[str, Any]]) -> dict[str, Verdict]:
    """The verdicts a review's decision log (`changes`, oldest first) sets that differ from triage.

    A decision targets a campaign, a review group or a message; the last one for a target stands, and one
    whose verdict is None undoes the standing decision for its target. A message's own decision beats its
    review group's, which beats its campaign's (the group is the narrower, decided looking at exactly those
    messages). This is the one reading of the log: the console shows it and dispatch checks against it.
    ValueError if an entry is malformed."""
    decided = standing_decisions(changes)
    if not any(decided):
        return {}
    if isinstance(manifest, Manifest):
        _whole(manifest)
        return effective_over(((m.id, m.verdict, m.campaign, m.review_group) for m in manifest.messages), decided)
    return effective_over(_rows(manifest), decided)


def _whole(manifest: Manifest) -> Manifest:
    """A manifest with its messages in it: a summary's are in parts, which only a ManifestReader reads."""
    if manifest.parts is not None:
        raise ValueError("a manifest summary holds no messages; pass its ManifestReader")
    return manifest


def _rows(reader: ManifestReader) -> Iterator[Row]:
    """(id, verdict, campaign, review group) of every message, from the parts' small columns."""
    for t in reader.columns(["id", "verdict", "campaign", "review_group"]):
        yield from zip(t.column(0).to_pylist(), map(Verdict, t.column(1).to_pylist()), t.column(2).to_pylist(),
                       t.column(3).to_pylist(), strict=True)


def approval_from_manifest(manifest: Manifest | ManifestReader, manifest_sha256: str, host: str, approved_by: str,
                           approved_at: datetime, approval_id: str, changes: list[dict[str, Any]] | None = None,
                           overrides: dict[str, Verdict] | None = None) -> Approval:
    """Turn a reviewed manifest into an approval; `review` messages stay held, never replayed or purged.

    The verdicts are the manifest's as changed by the decision log `changes` (effective_verdicts), so the
    approval is a function of what is recorded and dispatch can compute it again (`overrides`, if given,
    must be what the log says: a caller that already has them saves the second pass)."""
    changes = changes or []
    if overrides is None:
        overrides = effective_verdicts(manifest, changes)
    replay: list[ApprovedMessage] = []
    purge: list[ApprovedMessage] = []
    hold: list[ApprovedMessage] = []
    messages = _whole(manifest).messages if isinstance(manifest, Manifest) else manifest.iter_messages()
    incident = manifest.incident if isinstance(manifest, Manifest) else manifest.summary.incident
    for m in messages:
        v = overrides.get(m.id, m.verdict)
        am = ApprovedMessage(id=m.id, path=m.path, sha256=m.sha256, queue_id=m.queue_id, envelope=m.envelope)
        (replay if v is Verdict.valid else purge if v is Verdict.spam else hold).append(am)
    return Approval(approval_id=approval_id, incident=incident, host=host, manifest_sha256=manifest_sha256,
                    approved_by=approved_by, approved_at=approved_at, replay=replay, purge=purge, hold=hold,
                    changes=changes)


def approval_differences(approval: Approval, expected: Approval) -> list[str]:
    """How an approval differs from the one its manifest and decisions make (empty if it does not)."""
    out = []
    for name in ("replay", "purge", "hold"):
        have = {m.id: m for m in getattr(approval, name)}
        want = {m.id: m for m in getattr(expected, name)}
        for mid in sorted(have.keys() - want.keys())[:3]:
            out.append(f"{mid} is in {name} but the manifest and decisions do not put it there")
        for mid in sorted(want.keys() - have.keys())[:3]:
            out.append(f"{mid} is missing from {name}")
        for mid in sorted(have.keys() & want.keys()):
            if have[mid] != want[mid]:
                out.append(f"{mid} in {name} differs from the manifest (path, digest, queue id or envelope)")
                break
        if len(have) != len(getattr(approval, name)):
            out.append(f"a message is listed twice in {name}")
    return out


def instruction_from_approval(a: Approval, issued_at: datetime, ttl: timedelta = timedelta(days=2)) -> Instruction:
    iid = hashlib.sha256(f"{a.incident}\n{a.host}\n{a.approval_id}".encode()).hexdigest()[:32]
    return Instruction(instruction_id=iid, incident=a.incident, host=a.host, approval_id=a.approval_id,
                       issued_at=issued_at, expires_at=issued_at + ttl, replay=a.replay, purge=a.purge)


def sign(instruction: Instruction, private_key_pem: bytes, key_id: str) -> SignedInstruction:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InstructionRefused("signing key is not Ed25519")
    payload = canonical_json(instruction)
    sig = key.sign(payload.encode())
    return SignedInstruction(payload=payload, signature=base64.b64encode(sig).decode(), key_id=key_id)


def public_key_problem(public_key_pem: bytes) -> str | None:
    """Why these bytes are not an Ed25519 public key in PEM form, or None when they are (said once at start:
    a key read only when the first instruction came made every instruction fail, and nothing before)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(public_key_pem)
    except (ValueError, TypeError):  # cryptography's words point to its FAQ: ours say what to give
        return "not a public key in PEM form (give the signing.pub.pem that `spoolsweep keys init` wrote)"
    if isinstance(key, Ed25519PublicKey):
        return None
    kind = type(key).__name__.lstrip("_").replace("PublicKey", "") or "another kind of"
    return f"an {kind} public key, not an Ed25519 one (give the signing.pub.pem that `spoolsweep keys init` wrote)"


def check_signature(signed: SignedInstruction, public_key_pem: bytes) -> None:
    """Raise InstructionRefused unless the payload carries a good Ed25519 signature of this key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise InstructionRefused("verification key is not Ed25519")
    try:
        key.verify(base64.b64decode(signed.signature, validate=True), signed.payload.encode())
    except (InvalidSignature, ValueError):
        raise InstructionRefused("bad signature") from None


def verify(signed: SignedInstruction, public_key_pem: bytes, host: str, now: datetime) -> Instruction:
    """The instruction, if its signature is good, it names this host and it has not expired."""
    check_signature(signed, public_key_pem)
    try:
        ins = Instruction.model_validate_json(signed.payload)
    except ValueError as e:
        raise InstructionRefused(f"malformed payload: {str(e).splitlines()[0]}") from None
    if ins.host != host:
        raise InstructionRefused(f"it is for host {ins.host!r}, this is {host!r}")
    if now >= ins.expires_at:
        raise InstructionRefused(f"expired at {ins.expires_at.isoformat()}")
    return ins


def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


def key_id_of(public_raw: bytes) -> str:
    """The id an Ed25519 public key (its 32 raw bytes) goes by in signed instructions."""
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def approval_id(manifest_sha256: str, host: str, by: str) -> str:
    """One approval per manifest, host and person: approving twice is the same approval, not a second replay."""
    return hashlib.sha256(f"{manifest_sha256}\n{host}\n{by}".encode()).hexdigest()[:24]
