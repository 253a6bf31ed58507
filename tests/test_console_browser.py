"""The console in Debian's headless Chromium: open, inspect, flip a verdict, approve; hostile subjects stay text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from pipeline.instructions import Approval
from pipeline.manifest_io import read_manifest
from tests.support.console import INCIDENT, XSS_SUBJECTS, build_store, served

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
TOKEN = "browser-test-token"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                                       reason=f"{CHROMIUM} is missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def store_root(corpus, policy, tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("console-browser") / "store", corpus, policy)


@pytest.fixture(scope="module")
def server(store_root):
    with served(store_root, TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.problems = []
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    # only the console's own origin may be contacted
    pg.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server) else r.abort())
    pg.goto(f"{server}/?token={TOKEN}")
    pg.wait_for_selector("text=Incidents")
    yield pg
    ctx.close()


def shot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def open_hash(page, server: str, hash_: str) -> None:
    """Go to a console page and wait until it has rendered (a hash change alone leaves the old page up a while)."""
    page.goto(f"{server}/{hash_}")
    page.wait_for_function("h => document.getElementById('main').dataset.route === h", arg=hash_)


def no_xss(page) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0


def test_a_slow_page_never_covers_a_newer_one(browser, server):
    """The incidents list answers late, after the admin already opened an incident: the incident page stays."""
    ctx = browser.new_context()
    # delay only the incidents list's answer, inside the page, so nothing else waits
    ctx.add_init_script("""
      const f = window.fetch;
      window.fetch = (u, o) => f(u, o).then((r) => new URL(u, location.href).pathname === "/api/incidents"
        ? new Promise((ok) => setTimeout(() => ok(r), 1500)) : r);
    """)
    pg = ctx.new_page()
    pg.goto(f"{server}/?token={TOKEN}")
    open_hash(pg, server, f"#/i/{INCIDENT}")
    assert pg.locator("section.card").count() > 0
    pg.wait_for_timeout(2500)  # past the late answer
    assert pg.locator("section.card").count() > 0
    assert pg.evaluate("document.getElementById('main').dataset.route") == f"#/i/{INCIDENT}"
    ctx.close()


def test_wrong_token_gets_nothing(browser, server):
    ctx = browser.new_context()
    pg = ctx.new_page()
    r = pg.goto(f"{server}/?token=wrong")
    assert r.status == 401
    assert pg.goto(f"{server}/api/incidents").status == 401
    ctx.close()


def test_review_flip_approve(page, server, store_root):
    assert page.url == f"{server}/"  # the token left the address bar
    shot(page, "01-incidents")
    page.click(f"a:text('{INCIDENT}')")
    page.wait_for_selector("section.card")
    no_xss(page)
    shot(page, "02-incident")
    assert page.locator(".chart svg rect").count() > 0
    cards = page.locator("section.card")
    sizes = [int(cards.nth(i).locator("h3").inner_text().split("·")[1].split()[0].replace(",", ""))
             for i in range(cards.count())]
    assert sizes == sorted(sizes, reverse=True)

    # inspect the largest campaign, then one of its messages
    first = cards.first
    cid = first.get_attribute("data-campaign")
    first.locator("a:text('Messages')").click()
    page.wait_for_selector("h1:text('Messages')")
    assert page.locator("tbody tr").count() == min(50, sizes[0])
    shot(page, "03-campaign-messages")
    page.locator("tbody tr a").first.click()
    page.wait_for_selector("h2:text('Headers')")
    shot(page, "04-message")

    # flip the campaign to review with the keyboard, as a named reviewer
    page.fill("#reviewer", "carol")
    page.keyboard.press("Tab")
    open_hash(page, server, f"#/i/{INCIDENT}")
    card = page.locator(f"section.card[data-campaign='{cid}']")
    card.locator("button[data-verdict='review']").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"section.card[data-campaign='{cid}'] .verdict-review")
    dec = json.loads((store_root / f"state/{INCIDENT}/decisions.json").read_text())
    assert dec["campaigns"][cid]["verdict"] == "review" and dec["campaigns"][cid]["by"] == "carol"

    # approve through the confirmation
    page.click("a:text('Approve')")
    summary = page.locator("p.summary").inner_text()
    assert summary.startswith("replay ") and "hold" in summary
    shot(page, "05-approve")
    page.click("button:text('Approve…')")
    assert page.input_value("input[name=by]") == "carol"
    page.fill("input[name=by]", "alice")
    shot(page, "06-confirm")
    assert not list(store_root.glob("approvals/*/*.json"))
    page.click("button:text('Confirm approval')")
    page.wait_for_selector("text=Approved:")
    [key] = list(store_root.glob(f"approvals/{INCIDENT}/*.json"))
    a = Approval.model_validate_json(key.read_bytes())
    assert a.approved_by == "alice" and len(a.hold) >= sizes[0]
    assert a.changes[0]["target"] == cid and a.changes[0]["verdict"] == "review" and a.changes[0]["by"] == "carol"
    # the dispatch step turns the console's approval into a signed instruction on the host's channel
    from datetime import UTC, datetime

    from pipeline.instructions import SignedInstruction, verify
    from pipeline.service import incidents as embedded
    from pipeline.service.dispatch import dispatch
    from pipeline.store import LocalChannel, LocalStore

    pub, kid = embedded.keys_init(store_root / "keys-test")
    channel = LocalChannel(store_root / "channel")
    pem = (store_root / "keys-test/keys/signing.pem").read_bytes()
    dispatch(LocalStore(store_root), channel, key.relative_to(store_root).as_posix(), pem, kid)
    msgs = channel.receive(a.host, max_messages=100)
    parts = [verify(SignedInstruction.model_validate_json(m.body), pub.read_bytes(), a.host, datetime.now(UTC))
             for m in msgs]
    assert {m.id for p in parts for m in p.replay} == {m.id for m in a.replay}
    assert not {m.id for p in parts for m in p.purge} & {m.id for m in a.hold}
    page.click("a:text('Watch the replay')")
    page.wait_for_selector("text=No receipts from the agent yet.")
    shot(page, "07-progress")
    assert not [p for p in page.problems if "Content Security Policy" in p or "Uncaught" in p], page.problems


def test_hostile_subjects_stay_text(page, server):
    open_hash(page, server, f"#/i/{INCIDENT}/messages?q=__xss")
    texts = page.locator("tbody tr a.subject").all_inner_texts()
    assert sorted(texts) == sorted(XSS_SUBJECTS[:2])
    no_xss(page)
    shot(page, "08-hostile-list")
    for subject in XSS_SUBJECTS:
        open_hash(page, server, f"#/i/{INCIDENT}/messages?q={quote(subject[:12])}")
        page.locator("tbody tr a.subject").first.click()
        page.wait_for_selector("h2:text('Body (as text, never rendered)')")
        # triage keeps the first 2,000 characters of a subject
        assert page.locator("h1.subject").inner_text() == subject[:2000]
        no_xss(page)
    shot(page, "09-hostile-message")
    page.set_viewport_size({"width": 380, "height": 800})
    open_hash(page, server, f"#/i/{INCIDENT}")
    no_xss(page)
    # the page re-renders after the resize; wait for it to settle, then it must fit (no horizontal scroll)
    page.wait_for_function("() => document.documentElement.scrollWidth <= 400", timeout=10_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    shot(page, "10-narrow-incident")
    shot(page, "11-narrow-incident-top", full_page=False)
    assert not [p for p in page.problems if "Content Security Policy" in p or "Uncaught" in p], page.problems


def test_many_campaigns_come_in_steps(browser, store_root, tmp_path):
    """An incident with 150 campaigns: the page shows the 60 largest, 'Show 200 more' brings the rest, largest first."""

    m = read_manifest(store_root / f"manifests/{INCIDENT}")
    base = m.campaigns[0]
    camps = [base.model_copy(update={"id": i, "size": 1000 - i, "label": f"run {i}"}) for i in range(1, 151)]
    big = m.model_copy(update={"incident": "many", "campaigns": camps})
    (tmp_path / "manifests/many").mkdir(parents=True)
    (tmp_path / "manifests/many/manifest.json").write_text(big.model_dump_json())
    with served(tmp_path, TOKEN) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
        pg.goto(f"{url}/?token={TOKEN}")
        open_hash(pg, url, "#/i/many")
        assert pg.locator("section.card").count() == 60
        assert "60 largest of 150 campaigns" in pg.inner_text("main")
        pg.click("a:text('Show 200 more')")
        pg.wait_for_function("() => document.querySelectorAll('section.card').length === 150")
        ids = [int(x) for x in pg.eval_on_selector_all("section.card", "els => els.map(e => e.dataset.campaign)")]
        assert ids == list(range(1, 151))
        assert pg.locator("a:text('Show 200 more')").count() == 0
        ctx.close()
