"""Read incidents from a store (local folder, S3) or one triage folder; cache parsed manifests; apply decisions."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import math
import tempfile
import threading
from array import array
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import queues
from pipeline.archive import ArchiveReport, iter_members
from pipeline.errors import StoreError
from pipeline.instructions import Receipt, effective_over, standing_decisions
from pipeline.manifest_io import ManifestReader
from pipeline.models import Manifest, ManifestMessage, Verdict
from pipeline.policy import Limits
from pipeline.review_groups import group_review
from pipeline.service.incidents import approve, write_approval
from pipeline.store import LocalStore, Store

BODY_LIMIT = 200_000  # characters of body text sent to the page
# A remote snapshot bigger than this is not downloaded for a drill-down (its messages show from the manifest):
# a Lambda has little /tmp and 30 s; parse cuts snapshots over 64 MiB into parts, which stay under it.
RAW_LIMIT = 256 * 2**20
CACHE_FACTOR = 2  # downloads kept on disk: at most this many times RAW_LIMIT (the stack gives /tmp 1 GiB)


VERDICTS = list(Verdict)


@dataclass
class MessageIndex:
    """Per message, in manifest order, what the pages filter and count on: an id and a few numbers (about
    100 bytes a message), never the messages themselves, which are read from the parts a page at a time."""

    ids: list[str] = field(default_factory=list)
    verdict: bytearray = field(default_factory=bytearray)  # positions in VERDICTS
    campaign: array = field(default_factory=lambda: array("q"))  # -1: in no campaign
    group: array = field(default_factory=lambda: array("q"))  # -1: in no review group
    arrival: array = field(default_factory=lambda: array("d"))  # epoch seconds; nan: unknown

    def add(self, t: Any) -> None:
        self.ids.extend(t.column("id").to_pylist())
        self.verdict.extend(VERDICTS.index(Verdict(v)) for v in t.column("verdict").to_pylist())
        self.campaign.extend(-1 if c is None else c for c in t.column("campaign").to_pylist())
        self.group.extend(-1 if g is None else g for g in t.column("review_group").to_pylist())
        self.arrival.extend(math.nan if a is None else a for a in t.column("arrival").to_pylist())

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> Iterator[tuple[str, Verdict, int | None, int | None]]:
        for mid, v, c, g in zip(self.ids, self.verdict, self.campaign, self.group, strict=True):
            yield mid, VERDICTS[v], None if c < 0 else c, None if g < 0 else g

    def position(self, mid: str) -> int | None:
        try:
            return self.ids.index(mid)
        except ValueError:
            return None

    def verdicts(self, ov: dict[str, Verdict]) -> list[Verdict]:
        """Every message's verdict as decided so far."""
        out = [VERDICTS[v] for v in self.verdict]
        if ov:
            for i, mid in enumerate(self.ids):
                if mid in ov:
                    out[i] = ov[mid]
        return out


@dataclass
class Loaded:
    """A manifest's summary, its reader (the messages, part by part) and the index the pages ask for again and
    again."""

    manifest: Manifest  # the summary: `messages` is empty, the reader reads them
    reader: ManifestReader
    sha256: str
    ix: MessageIndex
    version: str
    timeline: dict[str, Any] = field(default_factory=dict)
    last_arrival: str | None = None

    def messages(self, positions: Sequence[int]) -> list[ManifestMessage]:
        return self.reader.at(list(positions))

    def columns(self, names: list[str]) -> Iterator[tuple[int, list[Any]]]:
        """(position of the first, values) of a column per part, or (with several names) rows of them."""
        at = 0
        for t in self.reader.columns(names):
            cols = [t.column(n).to_pylist() for n in names]
            yield at, cols[0] if len(cols) == 1 else list(zip(*cols, strict=True))
            at += t.num_rows

    def search(self, needle: str) -> set[int]:
        """Positions of the messages whose subject, senders, recipients, client or id hold `needle`
        (lowercase), or whose campaign's terms do."""
        import pyarrow.compute as pc

        camps = {c.id for c in self.manifest.campaigns if needle in c.label.lower()}
        out: set[int] = set()
        at = 0
        for t in self.reader.columns(["search"]):
            out.update(at + i for i in pc.indices_nonzero(pc.match_substring(t.column(0), needle)).to_pylist())
            at += t.num_rows
        if camps:
            out.update(i for i, c in enumerate(self.ix.campaign) if c in camps)
        return out


class Incidents:
    """A store (LocalStore, S3Store: any pipeline.store.Store), a local store root, or a plain triage
    output folder holding manifest.json (local only: it becomes one incident)."""

    def __init__(self, source: str | Path | Store, raw_limit: int = RAW_LIMIT) -> None:
        self.folder = False
        self.name = "incident"
        if isinstance(source, (str, Path)):
            root = Path(source)
            self.folder = (root / "manifest.json").is_file()
            self.name = root.name
            source = LocalStore(root)
        self.store: Store = source
        self.raw_limit = raw_limit
        self._cache: dict[str, Loaded] = {}
        self._lock = threading.RLock()
        self._fetch_lock = threading.Lock()
        # downloaded snapshots (remote stores only): copies of customers' mail, so the folder goes with this object
        # (close(), the app's shutdown, garbage collection, or the interpreter's exit), never left behind in /tmp
        self._scratch_dir: tempfile.TemporaryDirectory[str] | None = None
        self._kept: OrderedDict[Path, int] = OrderedDict()  # those downloads, least recently used first
        self._where: dict[tuple[str, str], str] = {}  # (incident, member path) -> the snapshot key it is in

    # --- where things are
    def ids(self) -> list[str]:
        if self.folder:
            return [self._folder_incident()]
        names: set[str] = set()
        for q in (queues.MANIFESTS, queues.INCOMING):
            for key in self.store.list(queues.prefix(q)):
                parts = key.split("/")
                if len(parts) >= 3 and _valid_name(parts[1]):
                    names.add(parts[1])
        return sorted(names)

    def _folder_incident(self) -> str:
        m = self.load_key("manifest.json")
        return m.manifest.incident if m else self.name

    def manifest_key(self, incident: str) -> str:
        return "manifest.json" if self.folder else queues.manifest_key(incident)

    def load_key(self, key: str) -> Loaded | None:
        version = self.store.version(key)
        if version is None:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit.version == version:
                return hit
            try:
                data = self.store.get(key)
            except StoreError:
                return None  # removed since the version check
            reader = ManifestReader(self.store, key=key, data=data)
            m = reader.summary
            if m.totals.review and not m.review_groups:
                # a manifest from before review groups (one file, messages held): group it here, as triage does
                m.review_groups = group_review(list(reader.iter_messages()), spam_ips={s.client_ip for s in m.sources})
            ix = MessageIndex()
            for t in reader.columns(["id", "verdict", "campaign", "review_group", "arrival"]):
                ix.add(t)
            loaded = Loaded(manifest=m, reader=reader, sha256=reader.sha256, ix=ix, version=version)
            loaded.timeline = _timeline(m, ix)
            latest, when = -1, -math.inf
            for i, a in enumerate(ix.arrival):
                if a > when:  # nan (unknown) never is
                    latest, when = i, a
            if latest >= 0:
                t = reader.at([latest])[0].envelope.arrival_time
                loaded.last_arrival = t.isoformat() if t else None
            self._cache[key] = loaded
            return loaded

    def load(self, incident: str) -> Loaded | None:
        queues.check_name("incident", incident)
        if self.folder and incident != self._folder_incident():
            return None
        return self.load_key(self.manifest_key(incident))

    def warm(self) -> None:
        """Parse every manifest once in the background, so the first page view does not pay for it."""
        for iid in self.ids():
            try:
                self.load(iid)
            except (ValueError, OSError, StoreError):
                continue

    # --- decisions
    def decisions(self, incident: str) -> dict[str, Any]:
        key = queues.decisions_key(incident)
        if self.store.exists(key):
            return json.loads(self.store.get(key))
        return {"campaigns": {}, "messages": {}, "groups": {}, "log": []}

    def decide(self, incident: str, kind: str, target: str, verdict: Verdict | None, by: str,
               note: str) -> dict[str, Any]:
        """Record a decision on a campaign, a review group or a message; verdict None undoes the standing one
        (the log keeps both, with who and when)."""
        with self._lock:
            d = self.decisions(incident)
            bucket = d.setdefault(_BUCKETS[kind], {})
            at = datetime.now(UTC).isoformat()
            if verdict is None:
                prev = bucket.pop(target, None)
                d["log"].append({"kind": kind, "target": target, "verdict": None, "by": by, "at": at,
                                 "note": note, "undoes": prev["verdict"] if prev else None})
            else:
                entry = {"verdict": verdict.value, "by": by, "at": at, "note": note}
                bucket[target] = entry
                d["log"].append({"kind": kind, "target": target, **entry})
            self.store.put(queues.decisions_key(incident), json.dumps(d, indent=1).encode())
            return d

    def effective(self, loaded: Loaded, decisions: dict[str, Any]) -> dict[str, Verdict]:
        """Overrides that differ from triage, read from the decision log exactly as dispatch reads it."""
        return effective_over(loaded.ix.rows(), standing_decisions(decisions.get("log", [])))

    # --- approval
    def summary(self, incident: str, loaded: Loaded, d: dict[str, Any] | None = None) -> dict[str, Any]:
        d = self.decisions(incident) if d is None else d
        ov = self.effective(loaded, d)
        now = loaded.ix.verdicts(ov)
        counts: Counter[str] = Counter(v.value for v in now)
        rcpts: set[str] = set()
        for at, rcpt in loaded.columns(["rcpt_to"]):
            for i, r in enumerate(rcpt):
                if now[at + i] is Verdict.valid:
                    rcpts.update(r)
        digest = hashlib.sha256((loaded.sha256 + json.dumps(sorted((k, v.value) for k, v in ov.items()))).encode())
        n, k, r = counts["valid"], counts["spam"], counts["review"]
        return {"replay": n, "recipients": len(rcpts), "purge": k, "hold": r, "overrides": len(ov),
                "digest": digest.hexdigest(), "manifest_sha256": loaded.sha256,
                "text": f"replay {n:,} messages to {len(rcpts):,} recipients, purge {k:,}, hold {r:,}",
                "decided": _decided(loaded, d)}

    def approve(self, incident: str, loaded: Loaded, by: str, digest: str) -> tuple[str, bool] | None:
        """Write the approval if `digest` is still the summary's (None when the decisions changed since)."""
        with self._lock:
            d = self.decisions(incident)
            if not hmac.compare_digest(digest, self.summary(incident, loaded, d)["digest"]):
                return None
            return self._approve(incident, loaded, by, d)

    def _approve(self, incident: str, loaded: Loaded, by: str, d: dict[str, Any]) -> tuple[str, bool]:
        ov = self.effective(loaded, d)
        host = self.host(incident, loaded)
        if not self.folder:
            done = approve(self.store, incident, by, host=host, overrides=ov, changes=d.get("log", []))
        else:  # a plain triage folder: the same approval object, written once next to the manifest
            done = write_approval(self.store, incident, loaded.reader, loaded.sha256, host, by, datetime.now(UTC), ov,
                                  d.get("log", []))
        return done.key, done.new

    def host(self, incident: str, loaded: Loaded) -> str:
        """The manifest's host; else the one host that uploaded the snapshot; else 'local'."""
        hosts = loaded.manifest.snapshot.hosts
        if not hosts and not self.folder:
            hosts = sorted({h for k in self.store.list(queues.incoming_prefix(incident))
                            if (h := queues.host_of_incoming_key(k)) is not None})
        if len(hosts) > 1:
            raise ValueError(f"incident {incident} names hosts {hosts}; approve it with spoolsweep approve --host")
        return hosts[0] if hosts else "local"

    def approvals(self, incident: str) -> list[str]:
        return list(self.store.list(queues.approvals_prefix(incident)))

    # --- progress and reports
    def receipts(self, incident: str) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        rows: list[dict[str, Any]] = []
        for key in self.store.list(queues.receipts_prefix(incident)):
            try:
                r = Receipt.model_validate_json(self.store.get(key))
            except ValueError:
                rows.append({"key": key, "error": "unreadable receipt"})
                continue
            c = r.counts()
            totals.update(c)
            rows.append({"key": key, "host": r.host, "instruction_id": r.instruction_id,
                         "finished": r.finished_at is not None, "refused": r.refused, "counts": c})
        return {"totals": {k: totals.get(k, 0) for k in ("replayed", "purged", "missing", "failed", "refused")},
                "receipts": rows}

    def blocklists(self, incident: str) -> dict[str, Any] | None:
        key = queues.blocklist_key(incident)
        if not self.store.exists(key):
            return None
        return json.loads(self.store.get(key))

    def status(self, incident: str, loaded: Loaded | None) -> str:
        if loaded is None:
            return "parsing"
        if not self.approvals(incident):
            d = self.decisions(incident)
            return "awaiting approval" if d.get("log") else "triaged"
        r = self.receipts(incident)
        if r["receipts"] and all(x.get("finished") for x in r["receipts"]):
            return "done"
        return "replaying"

    # --- one message
    def raw(self, incident: str, m: ManifestMessage) -> bytes | None:
        """The message's bytes from the snapshot under incoming/, if it is there (and small enough to fetch)."""
        if self.folder:
            return None
        keys = sorted(self.store.list(queues.incoming_prefix(incident)))
        fallback: bytes | None = None  # same path, other bytes: two hosts can both have messages/0001.eml

        def same(data: bytes) -> bool:
            return hashlib.sha256(data).hexdigest() == m.sha256

        # a snapshot uploaded as a folder (a local store): each message is an object of its own
        for key in keys:
            rest = key.split("/", 4)[4:]
            if rest and (rest[0] == m.path or rest[0].endswith("/" + m.path)):
                data = self.store.get(key)
                if same(data):
                    return data
                fallback = fallback or data
        archives = [k for k in keys if k.count("/") == 3]
        # the snapshot (or part) a message was last seen in first: a split snapshot is not scanned part by part again
        seen = self._where.get((incident, m.path))
        if seen in archives:
            archives.remove(seen)
            archives.insert(0, seen)
        for key in archives:
            try:
                path = self._local(key)
                if path is None:
                    continue
                for member in iter_members(path, Limits(), ArchiveReport()):
                    self._where[(incident, member.path)] = key
                    if member.data is None:
                        continue  # too big to hold: nothing to show from it, and the scan goes on
                    if member.path == m.path or member.path.endswith("/" + m.path):
                        if same(member.data):
                            return member.data
                        fallback = fallback or member.data
            except Exception:  # noqa: S112 - an unreadable snapshot falls back to manifest data
                continue
        return fallback

    def _local(self, key: str) -> Path | None:
        """A snapshot as a local file: the local store's own, else a download kept while its version holds."""
        if isinstance(self.store, LocalStore):
            return self.store.root / key
        size_of = getattr(self.store, "size", None)
        size = size_of(key) if size_of is not None else None
        if size is not None and size > self.raw_limit:
            return None
        version = self.store.version(key)
        if version is None:
            return None
        with self._fetch_lock:
            path = self._scratch() / hashlib.sha256(f"{key}\n{version}".encode()).hexdigest()[:32]
            if path.is_file():
                self._kept.move_to_end(path)
                return path
            self._evict(size or self.raw_limit)
            download = getattr(self.store, "download", None)
            if download is not None:
                download(key, path)  # S3: streamed to disk, never all in memory
            else:
                data = self.store.get(key)
                if len(data) > self.raw_limit:
                    return None
                path.write_bytes(data)
            self._kept[path] = path.stat().st_size
            return path

    def _scratch(self) -> Path:
        if self._scratch_dir is None:
            self._scratch_dir = tempfile.TemporaryDirectory(prefix="spoolsweep-console-")
        return Path(self._scratch_dir.name)

    def close(self) -> None:
        """Remove the downloaded snapshots; a later drill-down downloads again."""
        with self._fetch_lock:
            if self._scratch_dir is not None:
                self._scratch_dir.cleanup()
                self._scratch_dir = None
            self._kept.clear()

    def _evict(self, room: int) -> None:
        """Drop the least recently used downloads until `room` more bytes fit (a Lambda's /tmp is small)."""
        budget = CACHE_FACTOR * self.raw_limit
        while self._kept and sum(self._kept.values()) + room > budget:
            old, _ = self._kept.popitem(last=False)
            old.unlink(missing_ok=True)


_BUCKETS = {"campaign": "campaigns", "message": "messages", "group": "groups"}


def _decided(loaded: Loaded, d: dict[str, Any]) -> dict[str, Any]:
    """What review decided, by group, by campaign and by message, with who and when (the approval page's list)."""
    groups = {g.id: g for g in loaded.manifest.review_groups}
    camps = {c.id: c for c in loaded.manifest.campaigns}
    by_group = [{"group": int(k), "verdict": v["verdict"], "by": v["by"], "at": v["at"],
                 "messages": groups[int(k)].messages if int(k) in groups else 0,
                 "summary": groups[int(k)].summary if int(k) in groups else "(not in this manifest)"}
                for k, v in sorted(d.get("groups", {}).items(), key=lambda kv: int(kv[0]))]
    by_campaign = [{"campaign": int(k), "verdict": v["verdict"], "by": v["by"], "at": v["at"],
                    "messages": camps[int(k)].size if int(k) in camps else 0}
                   for k, v in sorted(d.get("campaigns", {}).items(), key=lambda kv: int(kv[0]))]
    msgs = d.get("messages", {})
    per_verdict = Counter(v["verdict"] for v in msgs.values())
    lines = [f"group #{g['group']}: {g['messages']:,} messages {g['verdict']} (by {g['by']} at {g['at']})"
             for g in by_group]
    lines += [f"campaign #{c['campaign']}: {c['messages']:,} messages {c['verdict']} (by {c['by']} at {c['at']})"
              for c in by_campaign]
    if msgs:
        lines.append(f"{len(msgs):,} single messages: " + ", ".join(f"{n:,} {v}" for v, n in per_verdict.most_common()))
    return {"groups": by_group[:500], "campaigns": by_campaign[:500], "messages": len(msgs),
            "messages_by_verdict": dict(per_verdict), "lines": lines[:1000]}


def message_row(x: ManifestMessage, ov: dict[str, Verdict]) -> dict[str, Any]:
    """One message in a list: what a reviewer scans, with the verdict as decided so far."""
    e = x.envelope
    return {"id": x.id, "subject": x.subject[:300], "from": e.mail_from, "rcpt": e.rcpt_to[:5],
            "rcpt_count": len(e.rcpt_to), "client": e.client_address, "campaign": x.campaign,
            "arrival": e.arrival_time.isoformat() if e.arrival_time else None,
            "verdict": ov.get(x.id, x.verdict).value, "triage_verdict": x.verdict.value,
            "reasons": [r.text for r in x.reasons][:5]}


def message_view(m: ManifestMessage, raw: bytes | None, verdict: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"id": m.id, "subject": m.subject, "from_header": m.from_header,
                           "envelope": m.envelope.model_dump(mode="json"), "verdict": verdict.value,
                           "triage_verdict": m.verdict.value, "campaign": m.campaign, "confidence": m.confidence,
                           "reasons": [r.model_dump() for r in m.reasons], "defects": m.defects,
                           "size": m.size, "sha256": m.sha256, "headers": [], "body": None,
                           "attachments": [{"filename": a, "content_type": "", "size": None} for a in m.attachments],
                           "source": "manifest"}
    if raw is None:
        return out
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out["source"] = "snapshot"
    out["headers"] = [[k, str(v)[:4000]] for k, v in msg.items()][:300]
    texts: list[str] = []
    atts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        fn = part.get_filename()
        # decode=True gives the bytes of a non-multipart part (the stubs also allow a Message)
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        if fn or not ctype.startswith("text/"):
            atts.append({"filename": fn or "", "content_type": ctype, "size": len(payload)})
            continue
        cs = part.get_content_charset() or "utf-8"
        try:
            t = payload.decode(cs, errors="replace")
        except LookupError:
            t = payload.decode("utf-8", errors="replace")
        texts.append(t if ctype == "text/plain" else f"[{ctype} shown as text]\n{t}")
    out["body"] = "\n\n".join(texts)[:BODY_LIMIT]
    out["attachments"] = atts
    return out


def _valid_name(name: str) -> bool:
    try:
        queues.check_name("incident", name)
    except ValueError:
        return False
    return True


def _timeline(m: Manifest, ix: MessageIndex, buckets: int = 48, top: int = 8) -> dict[str, Any]:
    times = [(t, None if c < 0 else c) for t, c in zip(ix.arrival, ix.campaign, strict=True) if not math.isnan(t)]
    if not times:
        return {"start": None, "bucket_seconds": 0, "series": []}
    t0 = min(t for t, _ in times)
    t1 = max(t for t, _ in times)
    width = max(60.0, (t1 - t0) / buckets)
    n = int((t1 - t0) // width) + 1
    big = [c.id for c in sorted(m.campaigns, key=lambda c: -c.size)[:top]]
    series: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    for t, c in times:
        name = str(c) if c in big else "other"
        series[name][int((t - t0) // width)] += 1
    labels = {str(c.id): c.subject or c.label for c in m.campaigns}  # readable; the terms are for search
    return {"start": datetime.fromtimestamp(t0, UTC).isoformat(), "bucket_seconds": width, "buckets": n,
            "series": [{"campaign": k, "label": labels.get(k, "not in a campaign"), "counts": v}
                       for k, v in sorted(series.items(), key=lambda kv: -sum(kv[1]))]}
