"""The console in headless Firefox ESR over Marionette: open, drill down, flip, keyboard, narrow, hostile text."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from spoolsweep.lab.sink import free_port
from tests.support.console import INCIDENT, XSS_SUBJECTS, build_store, served

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
TOKEN = "firefox-test-token"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(FIREFOX),
                                                       reason=f"{FIREFOX} is missing (apt-get install firefox-esr)")]
pytest.importorskip("marionette_driver", reason="marionette_driver is missing (pip install marionette-driver)")

from marionette_driver import By, Wait  # noqa: E402
from marionette_driver.keys import Keys  # noqa: E402
from marionette_driver.marionette import Marionette  # noqa: E402


def prefs(marionette_port: int, proxy_port: int) -> dict[str, object]:
    """A profile that talks to nothing but 127.0.0.1: no updates, telemetry, remote settings or prefetching."""
    return {
        "marionette.port": marionette_port,
        "app.update.disabledForTesting": True, "app.update.auto": False, "app.normandy.enabled": False,
        "browser.shell.checkDefaultBrowser": False, "browser.startup.page": 0,
        "browser.startup.homepage_override.mstone": "ignore", "browser.newtabpage.enabled": False,
        "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False, "browser.safebrowsing.blockedURIs.enabled": False,
        "browser.safebrowsing.update.enabled": False, "browser.search.update": False,
        "browser.region.network.url": "", "browser.region.update.enabled": False,
        "browser.topsites.contile.enabled": False, "browser.newtabpage.activity-stream.feeds.topsites": False,
        "datareporting.policy.dataSubmissionEnabled": False, "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False, "toolkit.telemetry.unified": False, "toolkit.telemetry.server": "",
        "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
        "extensions.systemAddon.update.enabled": False, "media.gmp-manager.updateEnabled": False,
        "messaging-system.rsexperimentloader.enabled": False, "nimbus.rollouts.enabled": False,
        "services.settings.server": "data:,#remote-settings-dummy/v1",  # no server: nothing to sync
        "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
        "network.dns.disablePrefetch": True, "network.prefetch-next": False,
        "network.http.speculative-parallel-limit": 0, "network.trr.mode": 5, "geo.provider.network.url": "",
        # whatever still wants out goes to a local sink instead (recorded, and the test fails on it)
        "network.proxy.type": 1, "network.proxy.http": "127.0.0.1", "network.proxy.http_port": proxy_port,
        "network.proxy.ssl": "127.0.0.1", "network.proxy.ssl_port": proxy_port,
        "network.proxy.no_proxies_on": "127.0.0.1", "network.proxy.allow_hijacking_localhost": False,
    }


class Sink:
    """A TCP listener on 127.0.0.1 that records the first line of every connection and closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                except OSError:
                    self.seen.append("(no request line)")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def store_root(corpus, policy, tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("console-firefox") / "store", corpus, policy)


@pytest.fixture(scope="module")
def server(store_root):
    with served(store_root, TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def firefox(tmp_path_factory, sink):
    """firefox-esr -headless -marionette on a fresh profile; yields a Marionette session; quits Firefox after."""
    work = tmp_path_factory.mktemp("firefox")
    profile = work / "profile"
    profile.mkdir()
    port = free_port()
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in prefs(port, sink.port).items()))
    log_path = work / "firefox.log"
    log = log_path.open("wb")
    # -remote-allow-system-access: the chrome context, to read Firefox's console and size the window below 500 px
    proc = subprocess.Popen([FIREFOX, "-headless", "-marionette", "-no-remote", "-remote-allow-system-access",
                             "-profile", str(profile), "about:blank"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1",
                                 # a release build honours services.settings.server only with this set
                                 "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1"})
    m = Marionette(host="127.0.0.1", port=port, socket_timeout=60, startup_timeout=30)
    try:
        # the client's own wait would keep polling a Firefox that already died; watch the process here
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"firefox-esr exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no Marionette on port {port}:\n{log_path.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        m.start_session()
        m.timeout.page_load = 20
        m.timeout.script = 10
        yield m
    finally:
        try:
            if m.session is not None:
                m.delete_session()
        except Exception:  # Firefox may already be gone; it is stopped below either way
            pass
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def js(m, script: str, *args):
    """Run script in the page's own global (the default sandbox would not see what page scripts set on window)."""
    return m.execute_script(script, script_args=args, sandbox=None)


def wait_js(m, script: str, *args, timeout: float = 10, message: str = ""):
    return Wait(m, timeout=timeout, interval=0.05).until(lambda mm: js(mm, script, *args),
                                                        message=message or script)


def size(m, width: int, height: int) -> None:
    """Resize the browser window; its toolbars keep it at 500 px or more unless their min-width is lifted."""
    with m.using_context("chrome"):
        m.execute_script("document.documentElement.style.minWidth = '0px'")
    m.set_window_rect(width=width, height=height)
    assert js(m, "return window.innerWidth") == width


@pytest.fixture()
def page(firefox, server):
    size(firefox, 1280, 900)
    with firefox.using_context("chrome"):
        firefox.execute_script("Services.console.reset()")
    firefox.navigate(f"{server}/?token={TOKEN}")
    wait_js(firefox, "return document.getElementById('main').dataset.route !== undefined")
    assert js(firefox, "return document.querySelector('main h1').textContent") == "Incidents"
    yield firefox
    # nothing on the page reached beyond the console's own origin, and Firefox logged no error for it
    foreign = js(firefox, "return performance.getEntriesByType('resource').map(e => e.name)"
                 ".filter(u => !u.startsWith(arguments[0]))", server)
    assert not foreign, foreign
    assert not page_errors(firefox, server)


def page_errors(m, server: str) -> list[str]:
    """Errors and CSP reports in Firefox's console that came from the console's pages."""
    with m.using_context("chrome"):
        return m.execute_script("""
          const [origin] = arguments;
          return Services.console.getMessageArray()
            .filter(x => x instanceof Ci.nsIScriptError)
            .filter(x => x.category.includes("CSP") || x.category.includes("Content Security")
                         || (!(x.flags & Ci.nsIScriptError.warningFlag) && (x.sourceName || "").startsWith(origin)))
            .map(x => x.category + ": " + x.errorMessage + " @ " + x.sourceName);
        """, script_args=(server,))


def shot(m, name: str, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"firefox-{name}.png").write_bytes(m.screenshot(format="binary", full=full))


def open_hash(m, server: str, hash_: str) -> None:
    """Go to a console page and wait until it has rendered; a reload when the address already is that page."""
    js(m, "document.getElementById('main').dataset.route = ''")
    if m.get_url() == f"{server}/{hash_}":
        m.refresh()
    else:
        m.navigate(f"{server}/{hash_}")
    wait_js(m, "return document.getElementById('main').dataset.route === arguments[0]", hash_)


def css(m, selector: str):
    return m.find_element(By.CSS_SELECTOR, selector)


def press(m, key: str) -> None:
    """One real key press, sent to whatever has the focus."""
    m.actions.sequence("key", "keyboard").key_down(key).key_up(key).perform()


def no_xss(m) -> None:
    assert js(m, "return typeof window.__xss") == "undefined"
    assert js(m, "return document.querySelectorAll('main script, main img').length") == 0


def test_wrong_token_gets_nothing(firefox, server):
    firefox.navigate(f"{server}/?token=wrong")
    assert js(firefox, "return document.body.textContent") == "wrong token"
    firefox.delete_all_cookies()
    firefox.navigate(f"{server}/api/incidents")
    assert "token is required" in js(firefox, "return document.body.textContent")


def test_open_drill_down_flip(page, server, store_root):
    m = page
    assert m.get_url() == f"{server}/"  # the token left the address bar
    shot(m, "01-incidents")
    css(m, f"a[href='#/i/{INCIDENT}']").click()
    wait_js(m, "return document.getElementById('main').dataset.route === arguments[0]", f"#/i/{INCIDENT}")
    cards = m.find_elements(By.CSS_SELECTOR, "section.card")
    sizes = [int(c.find_element(By.CSS_SELECTOR, "h3").text.split("·")[1].split()[0].replace(",", "")) for c in cards]
    assert sizes and sizes == sorted(sizes, reverse=True)
    assert js(m, "return document.querySelectorAll('.chart svg rect').length") > 0
    # a card has room: Firefox lays it out with its label, samples and buttons visible
    assert cards[0].rect["width"] > 300 and cards[0].rect["height"] > 100
    assert cards[0].find_element(By.CSS_SELECTOR, "button[data-verdict='review']").is_displayed()
    no_xss(m)
    shot(m, "02-incident")

    # drill down: the campaign's messages, then one message, its body shown as text
    cid = cards[0].get_attribute("data-campaign")
    cards[0].find_element(By.CSS_SELECTOR, "a[href*='messages?campaign=']").click()
    wait_js(m, "return document.querySelector('main h1')?.textContent.startsWith('Messages')")
    shot(m, "03-campaign-messages")
    css(m, "tbody tr a.subject").click()
    wait_js(m, "return [...document.querySelectorAll('main h2')].some(h => h.textContent.startsWith('Body'))")
    body = css(m, "main h2:nth-of-type(4) + pre")
    assert js(m, "return arguments[0].previousElementSibling.textContent", body) == "Body (as text, never rendered)"
    assert len(body.text) > 20 and js(m, "return arguments[0].children.length", body) == 0
    assert css(m, "main h2 + pre").text.lower().count("from:") >= 1  # the headers block
    shot(m, "04-message")

    # flip this message to review with a click, as a named reviewer
    reviewer = css(m, "#reviewer")
    reviewer.clear()
    reviewer.send_keys("dora")
    press(m, Keys.TAB)  # the change event stores the name
    mid = m.get_url().rsplit("/m/", 1)[1]
    now = css(m, "main p .verdict").text
    to = "review" if now != "review" else "spam"
    css(m, f"main button[data-verdict='{to}']").click()
    wait_js(m, "return document.querySelector('main p .verdict')?.textContent === arguments[0]", to)
    dec = json.loads((store_root / f"state/{INCIDENT}/decisions.json").read_text())
    assert dec["messages"][mid]["verdict"] == to and dec["messages"][mid]["by"] == "dora"

    # flip the campaign with the keyboard only: focus moves with Tab, Enter presses the button
    open_hash(m, server, f"#/i/{INCIDENT}")
    card = css(m, f"section.card[data-campaign='{cid}']")
    current = card.find_element(By.CSS_SELECTOR, "button[disabled]").get_attribute("data-verdict")
    target = "review" if current != "review" else "spam"
    js(m, "arguments[0].focus()", card.find_element(By.CSS_SELECTOR, "a[href*='messages?campaign=']"))
    for _ in range(3):  # the enabled buttons after the link, in order; a disabled one is skipped
        press(m, Keys.TAB)
        if js(m, "return document.activeElement.dataset.verdict") == target:
            break
    focused = js(m, "return document.activeElement")
    assert focused.get_attribute("data-verdict") == target, focused.get_property("outerHTML")
    assert js(m, "return arguments[0].contains(document.activeElement)", card)
    assert js(m, "return document.activeElement.matches(':focus-visible')")  # the focus ring shows
    shot(m, "05-keyboard-focus", full=False)
    press(m, Keys.ENTER)
    wait_js(m, "return document.querySelector(`section.card[data-campaign='${arguments[0]}'] .verdict`)"
               "?.textContent === arguments[1]", cid, target)
    dec = json.loads((store_root / f"state/{INCIDENT}/decisions.json").read_text())
    assert dec["campaigns"][cid]["verdict"] == target and dec["campaigns"][cid]["by"] == "dora"
    shot(m, "06-flipped")


def test_hostile_subjects_stay_text(page, server):
    m = page
    open_hash(m, server, f"#/i/{INCIDENT}/messages?q=__xss")
    texts = [a.text for a in m.find_elements(By.CSS_SELECTOR, "tbody tr a.subject")]
    assert sorted(texts) == sorted(XSS_SUBJECTS[:2])
    no_xss(m)
    shot(m, "07-hostile-list")
    for subject in XSS_SUBJECTS:
        open_hash(m, server, f"#/i/{INCIDENT}/messages?q={quote(subject[:12])}")
        css(m, "tbody tr a.subject").click()
        wait_js(m, "return [...document.querySelectorAll('main h2')].some(h => h.textContent.startsWith('Body'))")
        # triage keeps the first 2,000 characters of a subject; textContent, as .text would trim and fold it
        assert js(m, "return document.querySelector('h1.subject').textContent") == subject[:2000]
        no_xss(m)
    shot(m, "08-hostile-message")


def test_narrow_window_no_horizontal_scroll(page, server):
    m = page
    size(m, 420, 800)
    open_hash(m, server, f"#/i/{INCIDENT}")
    wait_js(m, "return document.querySelectorAll('section.card').length > 0")
    no_xss(m)
    widths = js(m, "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"horizontal scroll at 420 px: scrollWidth {widths[0]} > clientWidth {widths[1]}"
    shot(m, "09-narrow-incident")
    shot(m, "10-narrow-incident-top", full=False)


def test_nothing_left_for_the_internet(firefox, sink):
    """Last in the module: nothing Firefox did went past 127.0.0.1 (the proxy sink saw no request)."""
    assert not sink.seen, sorted(set(sink.seen))
