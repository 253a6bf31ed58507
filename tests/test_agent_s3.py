"""Snapshot upload to S3 (moto in server mode, over HTTP on 127.0.0.1): multipart with SHA-256 checksums,
resumed after an interruption, confirmed, never twice into one incident."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.errors import SnapshotExists
from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.take import take
from agent.upload import parse_destination
from tests.support.agent import write_pickup
from tests.support.moto import moto_server


@pytest.fixture
def s3(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="evidence")
        yield client


class Interrupted(Exception):
    pass


class FlakyClient:
    """Passes calls through, counting parts; raises after `fail_after` parts (a dropped connection)."""

    def __init__(self, real, fail_after: int | None = None) -> None:
        self.real, self.fail_after, self.parts = real, fail_after, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def upload_part(self, **kw):
        if self.fail_after is not None and len(self.parts) >= self.fail_after:
            raise Interrupted("connection dropped")
        self.parts.append(kw["PartNumber"])
        return self.real.upload_part(**kw)


@pytest.mark.slow
def test_s3_multipart_upload_resumes_and_confirms(tmp_path, s3, monkeypatch):
    monkeypatch.setattr("agent.upload.PART", 5 * 2**20)
    out = tmp_path / "Out"
    # incompressible bodies so the archive spans several parts
    msgs = [(f"s{i}@example.net", ["r@example.org"],
             b"Subject: big %d\r\n\r\n" % i + os.urandom(4 * 2**20).hex().encode()[: 6 * 2**20]) for i in range(3)]
    write_pickup(out, msgs)
    dest = parse_destination("s3://evidence/incoming/inc-s3/mx1/", None, None, "mx1")
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    flaky = FlakyClient(s3, fail_after=1)
    with pytest.raises(Interrupted):
        take(PickupQueue(out), "pickup-dir", dest, journal, tmp_path / "state", s3_client=flaky)
    row = journal.snapshot("inc-s3", "mx1")
    assert row["state"] == "packed" and '"1"' in row["upload_state"]
    archive = tmp_path / "state" / "snapshots" / "inc-s3" / "mx1-snapshot.tar.zst"
    assert archive.exists(), "the local copy stays until the upload is confirmed"

    again = FlakyClient(s3)
    s = take(PickupQueue(out), "pickup-dir", dest, journal, tmp_path / "state", s3_client=again)
    assert 1 not in again.parts and again.parts, "the finished part is not sent again"
    assert s.destination == "s3://evidence/incoming/inc-s3/mx1/snapshot.tar.zst"
    body = s3.get_object(Bucket="evidence", Key="incoming/inc-s3/mx1/snapshot.tar.zst")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == s.archive_sha256
    assert not archive.exists(), "the local copy goes once the checksum is confirmed"
    with pytest.raises(SnapshotExists):
        take(PickupQueue(out), "pickup-dir", dest, journal, tmp_path / "state", s3_client=s3)
    with pytest.raises(SnapshotExists):
        take(PickupQueue(out), "pickup-dir", dest, Journal(tmp_path / "other.sqlite"), tmp_path / "st2",
             s3_client=s3)


def test_what_s3_says_is_one_line_and_the_upload_goes_on_after_it(tmp_path, s3):
    # No bucket, no connection, no credentials: botocore's exception went up as a traceback, before the freeze
    # (listing the destination) or after it (the upload).
    from botocore.exceptions import EndpointConnectionError

    from agent.errors import AgentError, UploadError

    out = tmp_path / "Out"
    write_pickup(out, [("s@example.net", ["r@example.org"], b"Subject: hi\r\n\r\nhello\r\n")])
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    missing = parse_destination("s3://no-such-bucket/incoming/inc-e/mx1/", None, None, "mx1")
    with pytest.raises(AgentError, match=r"^The agent failed: s3://no-such-bucket/incoming/inc-e/mx1/ cannot be "
                                         r"listed, so nothing was frozen: NoSuchBucket: "):
        take(PickupQueue(out), "pickup-dir", missing, journal, tmp_path / "state", s3_client=s3)
    assert len(list(out.iterdir())) == 1 and not (tmp_path / "Out.old").exists()

    class Unreachable(FlakyClient):
        def create_multipart_upload(self, **kw):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/evidence")

    dest = parse_destination("s3://evidence/incoming/inc-e/mx1/", None, None, "mx1")
    with pytest.raises(UploadError, match=r"s3://evidence/incoming/inc-e/mx1/snapshot\.tar\.zst: Could not connect "
                                          r"to the endpoint URL: \"http://127\.0\.0\.1:1/evidence\"; the queue stays "
                                          r"frozen, the copy is .*mx1-snapshot\.tar\.zst: run the same command again"):
        take(PickupQueue(out), "pickup-dir", dest, journal, tmp_path / "state", s3_client=Unreachable(s3))
    assert (tmp_path / "Out.old").is_dir()
    s = take(PickupQueue(out), "pickup-dir", dest, journal, tmp_path / "state", s3_client=s3)
    assert s.messages == 1 and s.destination == "s3://evidence/incoming/inc-e/mx1/snapshot.tar.zst"
