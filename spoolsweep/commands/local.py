"""`spoolsweep up | upload | approve | keys init`: the whole pipeline on one machine, no cloud account."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from spoolsweep.console_out import err, fail, os_said, out

if TYPE_CHECKING:
    from adapters.bootstrap import Cloud
    from pipeline.store import Store

StoreOpt = Annotated[str, typer.Option("--store", envvar="SPOOLSWEEP_HOME",
                                       help="the store: a directory (embedded default) or s3://bucket")]
_DEFAULT = "spoolsweep-store"  # the agent (`spoolsweep agent run`) defaults to the same

keys_app = typer.Typer(no_args_is_help=True, help="The Ed25519 key instructions are signed with.")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(upload)
    app.command()(approve)
    app.add_typer(keys_app, name="keys")


def _cloud() -> Cloud:
    from adapters.bootstrap import cloud_from_env

    return cloud_from_env(region="us-east-1")  # as the functions' settings default


def _store(store: str) -> Store:
    from adapters.bootstrap import build_store

    return build_store(store, _cloud())


def up(
    store: StoreOpt = _DEFAULT,
    policy: Annotated[Path | None, typer.Option(help="site policy (TOML), copied into the store")] = None,
    once: Annotated[bool, typer.Option("--once", help="handle what is pending, then exit")] = False,
    workers: Annotated[int | None, typer.Option(
        min=1, help="parser processes, and the processes the triage workflow's steps run on (default: one per "
                    "core)")] = None,
    interval: Annotated[float, typer.Option(min=0.01, help="seconds between looks at the store")] = 0.5,
    step: Annotated[list[str] | None, typer.Option(help="with s3://: only these steps (parse, triage, "
                                                        "blocklist, dispatch), e.g. triage too big for Lambda")] = None,
    console: Annotated[bool | None, typer.Option("--console/--no-console", help="serve the review console on "
                                                 "127.0.0.1 (default: on, off with --once)")] = None,
    console_port: Annotated[int, typer.Option(
        min=0, max=65535, help="the console's port; 0 or a taken one picks a free one")] = 8765,
) -> None:
    """Run the pipeline on this machine: watch STORE/incoming/ and drive every snapshot to a manifest.

    Each new object gets the event S3 and SQS would send, handed to the same Lambda handlers;
    what is done is journaled in STORE/.runner/, so a restart resumes where it stopped. Once the last
    shard of an incident is parsed, the triage workflow the state machine runs on AWS runs here, its
    steps on a process pool, each journaled under STORE/state/<incident>/triage/run/.
    """
    from adapters.bootstrap import embedded_settings
    from adapters.runtime import LocalRunner
    from pipeline.errors import SpoolsweepError
    from pipeline.service.incidents import key_paths, keys_init, put_policy

    root = Path(store)
    serving = not once if console is None else console
    if store.startswith("s3://"):
        try:
            data = _store(store)
        except SpoolsweepError as e:
            fail(str(e))
            return
        server = _console(data, console_port) if serving else None
        try:
            _up_on_queues(store, once, interval, step or [])
        finally:
            if server is not None:
                server.should_exit = True
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        if policy is not None:
            from pipeline.policy import load_policy

            load_policy(policy)  # a folder, non-UTF-8 or bad TOML: the same one-line errors as triage's
            put_policy(_store(store), policy.read_bytes())
        if not key_paths(root)[0].exists():
            pub, kid = keys_init(root)
            err.print(f"new signing key {kid}; agents verify with {pub}")
    except (SpoolsweepError, OSError) as e:
        fail(str(e))

    def show(step: str, key: str, result: str) -> None:
        out.print(f"{step:<9} {key}  [{'green' if result == 'ok' else 'red'}]{result}[/]", highlight=False)
        if result == "ok" and key.startswith("manifests/") and key.endswith("/manifest.json"):
            _tell_manifest(root / key)

    runner = LocalRunner(root, settle=0.0 if once else 2.0, on_result=show,
                         settings=embedded_settings(root, workers))
    server = _console(root, console_port) if serving else None
    if once:
        runner.run_until_idle()
    else:
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        err.print(f"watching {root / 'incoming'} (Ctrl-C to stop)")
        try:
            runner.serve(lambda: bool(stopping), interval)
        except KeyboardInterrupt:
            pass
    for d in runner.dead():
        err.print(f"[red]dead letter[/] {d['step']}: {d['reason']}")
    if server is not None:
        server.should_exit = True


def _tell_manifest(path: Path) -> None:
    """What a manifest just written holds, and what of the snapshot could not be read: a snapshot that is no
    archive was handled ("ok") with nothing said but its manifest of 0 messages."""
    try:
        m = json.loads(path.read_bytes())
        t = m["totals"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    out.print(f"{'':<9} {m.get('incident', path.parent.name)}: {t['messages']:,} messages, valid {t['valid']:,}, "
              f"spam {t['spam']:,}, review {t['review']:,}", highlight=False)
    defects = m.get("archive_defects") or []
    for d in defects[:3]:
        out.print(f"{'':<9} [yellow]archive:[/] {escape(str(d))}", highlight=False, soft_wrap=True)
    if len(defects) > 3:
        out.print(f"{'':<9} [yellow]archive:[/] {len(defects) - 3:,} more in the manifest", highlight=False)


def _console(data: object, port: int):
    """The review console beside the pipeline, in a thread; None (and why) if it cannot run here."""
    try:
        from spoolsweep.commands.console import serve_in_thread

        url, server = serve_in_thread(data, port, os.environ.get("SPOOLSWEEP_CONSOLE_TOKEN"))
    except (ImportError, OSError) as e:
        err.print(f"console not started: {e}", highlight=False)
        return None
    err.print(f"console: {url}", highlight=False, soft_wrap=True)
    return server


def _up_on_queues(store: str, once: bool, interval: float, steps: list[str]) -> None:
    """The same handlers fed from the stack's SQS queues (LocalStack, or AWS without Lambda)."""
    from adapters import names
    from adapters.aws import client
    from adapters.runtime import SqsRunner

    cloud = _cloud()
    unknown = set(steps) - set(names.STEPS)
    if unknown:
        fail(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(names.STEPS)}")
    runner = SqsRunner(client("sqs", cloud.endpoint_url, cloud.region), prefix=cloud.name_prefix,
                       region=cloud.region or "us-east-1", steps=steps,
                       settings={"store": store, "channel": "sqs://", "endpoint_url": cloud.endpoint_url})
    err.print(f"polling {', '.join(names.event_queue(x, cloud.name_prefix) for x in runner.steps)} for {store} "
              "(Ctrl-C to stop)")
    try:
        while True:
            n = runner.run_once()
            if once and not n:
                return
            if not n:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


def upload(
    file: Annotated[Path, typer.Argument(help="a snapshot: .tar, .tar.gz, .tar.zst or a folder")],
    incident: Annotated[str, typer.Option(help="incident name")],
    host: Annotated[str, typer.Option(help="the mail host the snapshot is from")],
    store: StoreOpt = _DEFAULT,
    shard_size: Annotated[int, typer.Option(min=0, help="messages per shard; 0 uploads the file as it is")] = 20000,
) -> None:
    """Put a snapshot into the store's incoming/ (cut into shards that parse in parallel)."""
    from pipeline.errors import SpoolsweepError
    from pipeline.service.incidents import upload as put

    try:
        keys = put(_store(store), file, incident, host, shard_size)
    except (SpoolsweepError, ValueError) as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_said("The snapshot could not be uploaded", e))
        return
    for k in keys:
        out.print(k, highlight=False)
    err.print(f"{len(keys)} shard(s) uploaded")


def approve(
    incident: Annotated[str, typer.Argument(help="the incident whose manifest you reviewed")],
    by: Annotated[str, typer.Option(help="who approves")] = os.environ.get("USER", "admin"),
    host: Annotated[str | None, typer.Option(help="the host, if the manifest names several")] = None,
    store: StoreOpt = _DEFAULT,
) -> None:
    """Approve the manifest: valid mail is replayed, spam purged, review held; written once, never changed."""
    from pipeline.errors import SpoolsweepError
    from pipeline.service.incidents import approve as write

    try:
        done = write(_store(store), incident, by, host)
    except (SpoolsweepError, ValueError) as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_said("The approval could not be written", e))
        return
    key, a = done.key, done.approval
    out.print(f"{'approved' if done.new else 'already approved'}: {key}", highlight=False)
    out.print(f"replay {a.replay:,}  purge {a.purge:,}  hold {a.hold:,}  host {a.host}  "
              f"by {a.approved_by}", highlight=False)


@keys_app.command("init")
def keys_init(
    store: StoreOpt = _DEFAULT,
    force: Annotated[bool, typer.Option("--force", help="replace an existing key")] = False,
) -> None:
    """Create STORE/keys/signing.pem (0600) and signing.pub.pem, the key agents verify instructions with."""
    from pipeline.errors import SpoolsweepError
    from pipeline.service.incidents import keys_init as make

    try:
        pub, kid = make(Path(store), force=force)
    except SpoolsweepError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_said("The key could not be written", e))
        return
    out.print(f"key {kid}\npublic key: {pub}", highlight=False)
