"""Spamware-style campaigns: copies of real spam varied the way bulk-mail tools vary them, each variation switchable.

A campaign is one real spam message (from the corpus) reduced to a template: subject, sentences,
links, sender. Each copy is then rendered the way spamware renders it: per-recipient greetings,
spintax, word salads (visible and hidden), HTML comments and entities, zero-width characters,
leetspeak, shuffled sentences, rotating subjects and URL hosts, per-copy tokens, ids, boundaries
and forged Received chains, image-only copies, attachments whose bytes differ, base64 or
quoted-printable, and several KB of HTML. Every technique can be switched off, so a benchmark can
tell which one breaks grouping; the copy records which techniques it actually used.
Everything is drawn from the incident's seed, each campaign and each technique from a stream of its
own: the same seed gives the same bytes, and switching one technique off changes only what it did.
"""

from __future__ import annotations

import base64
import binascii
import email
import html
import random
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy as email_policy
from email.header import decode_header, make_header
from email.utils import format_datetime

from pipeline.normalise import html_to_text

# name -> what it does to a copy (the CLI's --technique help and the truth file use these names)
TECHNIQUES: dict[str, str] = {
    "greeting": "per-recipient greeting in the body and, for some copies, in the subject",
    "spintax": "synonym/spintax substitution of a share of the words",
    "salad": "a visible salad of random dictionary words after the signature",
    "hidden_salad": "a hidden word salad in the HTML (white-on-white, tiny font, display:none)",
    "comments": "HTML comments inside words and random comment tokens between blocks",
    "shuffle": "sentence and paragraph order shuffled per copy",
    "subjects": "several subject templates per campaign, each copy with its own suffix",
    "url_hosts": "links rotate over a pool of 2-60 hosts of different registered domains (off: one host)",
    "url_tokens": "a per-copy token in every link's path or query",
    "ids": "per-copy MIME boundary, From display name and Message-ID host",
    "received": "a forged chain of Received headers below ours",
    "leet": "leetspeak and mIxEd case in a share of the words",
    "zero_width": "zero-width characters inside words",
    "entities": "HTML character entities for a share of the letters",
    "image_only": "a share of the copies is an image (random per copy) with one line of text",
    "attachment": "an attachment whose bytes differ per copy",
    "encoding": "base64 or quoted-printable chosen per copy",
    "bounce_variants": "backscatter quotes copies truncated, headers only or re-encoded, and copies still queued",
}
# the share of campaigns that use a technique when it is on: most spamware uses most tricks, but
# image spam and attachments are a minority of runs
RATES: dict[str, float] = {t: 0.85 for t in TECHNIQUES} | {"image_only": 0.15, "attachment": 0.2, "received": 0.6,
                                                          "bounce_variants": 1.0}


def parse_techniques(on: Iterable[str] | None = None, off: Iterable[str] = ()) -> frozenset[str]:
    """The techniques in use: `on` (all when None or containing "all") minus `off`; unknown names raise."""
    on = list(on) if on is not None else ["all"]
    names = set()
    for n in [*on, *off]:
        if n not in TECHNIQUES and n not in ("all", "none"):
            raise ValueError(f"unknown technique {n!r} (known: {', '.join(TECHNIQUES)}, all, none)")
    for n in on:
        names |= set(TECHNIQUES) if n == "all" else set() if n == "none" else {n}
    return frozenset(names - set(off))


# a spintax table: spamware authors write {free|complimentary|no-cost}; these are the groups a
# template's words are spun with (each word in a group stands for all of them)
_SYNONYMS = """free complimentary no-cost gratis|buy purchase order get|now today immediately instantly
|best finest top greatest|great excellent superb fantastic|money cash funds dollars|offer deal promotion bargain
|click tap visit|here below now|information info details facts|business company firm enterprise
|people folks individuals everyone|home house household|work job employment|help assist support|need require want
|find discover locate|start begin launch|receive get obtain|send mail forward|product item merchandise
|service offering solution|price cost rate fee|save economize cut|special exclusive unique|limited restricted brief
|guarantee promise assurance warranty|amazing incredible astonishing remarkable|easy simple effortless painless
|fast quick rapid speedy|online internet web|site website page portal|program system plan method
|opportunity chance possibility opening|income earnings revenue profit|earn make gain generate|credit loan financing
|low reduced cheap affordable|high top premium|million millions|thousands hundreds|results outcomes returns
|success achievement triumph|secret hidden confidential|learn discover find|read review see|report review summary
|list directory database|remove delete unsubscribe|request ask demand|reply respond answer|please kindly
|thank thanks|friend buddy pal colleague|just only simply|every each all|many numerous lots|more extra additional
|very really extremely truly|right correct proper|new fresh brand-new latest|call phone ring|today tonight now
|want wish desire|make create build|good fine nice|big large huge massive|small little tiny|time moment period
|day date|week weekend|month season|year annual|customer client buyer|email e-mail message|address location
|order request|account profile|check verify confirm|sale discount clearance|win gain score|prize reward award
|cheap inexpensive affordable|quality grade class|health wellness fitness|weight pounds|loss reduction drop
|online digital|people persons|company corporation|internet net|mortgage refinance|rates percentages|debt bills
|approved accepted qualified|risk danger hazard|satisfaction happiness contentment|today immediately"""
SYN: dict[str, tuple[str, ...]] = {}
for _group in _SYNONYMS.replace("\n", "").split("|"):
    _words = tuple(_group.split())
    for _w in _words:
        SYN.setdefault(_w, _words)

_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "A": "@", "E": "3", "I": "1",
                       "O": "0", "S": "$"})
_ZW = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
_URL = re.compile(r"(?i)\bhttps?://[^\s<>\"')]+")
_WORD = re.compile(r"[a-z]{3,12}")
FIRST = ("John", "Mary", "Linda", "Peter", "Olga", "Ahmed", "Sara", "Tom", "Kim", "Raj", "Eva", "Paul", "Lucy",
         "Mike", "Nina", "Omar", "Jane", "Ken", "Zoe", "David", "Anna", "Chris", "Maria", "James", "Laura")
LAST = ("Smith", "Jones", "Brown", "Miller", "Davis", "Garcia", "Wilson", "Moore", "Taylor", "Clark", "Lewis",
        "Walker", "Young", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell")
TLDS = ("com", "net", "info", "biz", "ru", "cn", "top", "xyz", "org", "co", "us", "online", "site", "club")
MAILERS = ("Microsoft Outlook Express 6.00.2600.0000", "Microsoft Office Outlook 12.0", "The Bat! (v3.51.10) Home",
           "Mozilla Thunderbird 1.0.2 (Windows/20050317)", "PHPMailer 5.2.1 (http://code.google.com/a/apache-extras"
           ".org/p/phpmailer/)", "Foxmail 6, 15, 201, 23 [cn]", "Apple Mail (2.1084)", "QUALCOMM Windows Eudora "
           "Version 7.1.0.9", "AOL 9.0 for Windows US sub 5020", "eGroups Message Poster", "Lotus Notes Release 8.5")


@dataclass
class Template:
    """What spamware fills in: a real spam's subject, sentences (per paragraph) and links."""

    subject: str
    words: list[str]  # HTML-safe words of the whole text
    sentences: list[tuple[int, int]]  # word spans
    paragraphs: list[list[int]]  # sentence indices
    urls: list[str]
    from_name: str
    x_mailer: str | None
    has_entities: bool = False


def _header_text(msg: email.message.Message, name: str) -> str:
    v = msg.get(name)
    if v is None:
        return ""
    try:
        return str(make_header(decode_header(str(v)))).replace("\n", " ").strip()
    except Exception:  # a broken encoded-word: spamware would send what it has
        return str(v).replace("\n", " ").strip()


def _part_text(p: email.message.Message) -> str:
    raw = p.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    cs = p.get_content_charset() or "latin-1"
    try:
        return raw.decode(cs, "replace")
    except LookupError:
        return raw.decode("latin-1")


_MAX_TEMPLATE_TEXT = 4000  # a long newsletter-sized spam is cut: copies of tens of KB are the exception


def extract_template(raw: bytes) -> Template:
    """A template from one real spam message: its decoded subject, text, links, sender name and mailer."""
    msg = email.message_from_bytes(raw, policy=email_policy.compat32)
    plain = htm = ""
    for p in msg.walk():
        ct = p.get_content_type()
        if ct == "text/plain" and not plain and not p.get_filename():
            plain = _part_text(p)
        elif ct == "text/html" and not htm:
            htm = _part_text(p)
    urls = list(dict.fromkeys(_URL.findall(htm or plain)))[:5]
    text = plain if plain.strip() else html_to_text(htm)
    text = _URL.sub(" ", text)[:_MAX_TEMPLATE_TEXT]
    subject = _header_text(msg, "Subject") or "Important information"
    words: list[str] = []
    sentences: list[tuple[int, int]] = []
    paragraphs: list[list[int]] = []
    for para in re.split(r"\n\s*\n", text):
        sent_ids: list[int] = []
        for sent in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            ws = [html.escape(w, quote=False) for w in sent.split() if not w.startswith(("=", "--"))]
            if not ws:
                continue
            sentences.append((len(words), len(words) + len(ws)))
            words.extend(ws)
            sent_ids.append(len(sentences) - 1)
        if sent_ids:
            paragraphs.append(sent_ids)
    if len(words) < 8:  # an image-only or empty original: spamware would have a line of text at least
        ws = [html.escape(w, quote=False) for w in (subject + " - click below for details.").split()]
        sentences.append((len(words), len(words) + len(ws)))
        words.extend(ws)
        paragraphs.append([len(sentences) - 1])
    from_name = ""
    frm = _header_text(msg, "From")
    if "<" in frm:
        from_name = frm.split("<")[0].strip().strip('"')
    return Template(subject=subject[:200], words=words, sentences=sentences, paragraphs=paragraphs, urls=urls,
                    from_name=from_name[:60], x_mailer=_header_text(msg, "X-Mailer") or None,
                    has_entities=any("&" in w for w in words))


def dictionary(ham: list[bytes], limit: int = 20000) -> list[str]:
    """Real words for the salads: the commonest words of the corpus's real mail bodies, in a fixed order."""
    counts: dict[str, int] = {}
    for raw in ham:
        body = raw.partition(b"\n\n")[2][:20000].decode("latin-1").lower()
        for w in _WORD.findall(body):
            counts[w] = counts.get(w, 0) + 1
    ranked = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    return ranked[:limit] or ["lorem", "ipsum", "dolor", "sit", "amet"]


def _png(width: int, height: int, pixels: bytes) -> bytes:
    """A valid 8-bit greyscale PNG (what an image spam sends, varied per copy so no two hash alike)."""
    rows = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", binascii.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


@dataclass
class SpamCampaign:
    """One run of a spamware tool: a template, the techniques it uses and the parameters they drew."""

    id: str
    template: Template
    uses: frozenset[str]
    rng: random.Random
    words: list[str]  # the salad dictionary
    skin: int = 0
    spin_idx: list[int] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    image_share: float = 0.0
    banner: bytes = b""
    attachment: bytes = b""
    attachment_name: str = "document.pdf"
    mailer: str | None = None
    reply_to: str | None = None
    header_order: list[str] = field(default_factory=list)
    boundary: str = ""
    from_name: str = ""
    msgid_host: str = ""
    encoding: str = "quoted-printable"
    html_only: bool = False
    company: str = ""
    footer: str = ""
    word_rate: float = 0.1
    pstyle: str = ""
    nav: list[str] = field(default_factory=list)
    rt: dict[str, random.Random] = field(default_factory=dict)  # one stream per technique

    @classmethod
    def draw(cls, cid: str, template: Template, techniques: frozenset[str], rng: random.Random,
             words: list[str], rate: float | None = None) -> SpamCampaign:
        """A campaign using each of `techniques` at its usual rate (RATES), or at `rate` when given.

        One number is taken from `rng` (the campaign's own seed); every parameter is then drawn from
        streams of that seed, one per technique, whether or not the technique is on: switching a
        technique off removes its effect and changes nothing else, so runs are comparable.
        """
        seed = rng.getrandbits(64)
        r = random.Random(seed)
        rt = {t: random.Random(f"{seed}:{t}") for t in TECHNIQUES}
        chosen = {t for t in TECHNIQUES if r.random() < (RATES[t] if rate is None else rate)}
        c = cls(cid, template, frozenset(chosen & techniques), r, words, rt=rt)
        c.skin = r.randrange(3)
        c.word_rate = r.uniform(0.05, 0.25)
        s = rt["spintax"]
        c.spin_idx = [i for i, w in enumerate(template.words) if w.lower().strip(".,!?:;") in SYN and s.random() < 0.8]
        s = rt["subjects"]
        base = template.subject
        c.subjects = [base]
        for _ in range(s.randint(1, 5)):
            sw = [_spin(w, s) if s.random() < 0.7 else w for w in base.split()]
            c.subjects.append(s.choice(["", "", "RE: ", "Fwd: ", "FW: ", "Re: "]) + " ".join(sw))
        name = r.choice(words) + r.choice(words)
        c.hosts = [f"{name[:14]}.{r.choice(TLDS)}"]
        s = rt["url_hosts"]
        pool = max(2, round(60 ** s.random()))  # 2..60, log-uniform: most pools are small (off: one host)
        while "url_hosts" in c.uses and len(c.hosts) < pool:
            c.hosts.append(f"{s.choice(words)}{s.choice(words)[:6]}{s.randint(0, 99) if s.random() < 0.3 else ''}"
                           f".{s.choice(TLDS)}")
        c.paths = []
        for u in template.urls[:3] or ["/"]:
            path = "/" + u.split("://", 1)[-1].partition("/")[2].split("?")[0] if "://" in u else ""
            page = r.choice(["index.php", "go.html", "c.asp"])
            c.paths.append(path if len(path) > 1 else f"/{r.choice(words)}/{page}")
        s = rt["image_only"]
        c.image_share = s.uniform(0.3, 1.0) if "image_only" in c.uses else 0.0
        c.banner = s.randbytes(s.randint(16, 64))
        s = rt["attachment"]
        kind = s.choice([("pdf", b"%PDF-1.4\n"), ("zip", b"PK\x03\x04"), ("doc", b"\xd0\xcf\x11\xe0")])
        c.attachment_name = f"{s.choice(['invoice', 'document', 'order', 'details', 'statement'])}.{kind[0]}"
        c.attachment = kind[1] + s.randbytes(s.randint(2000, 12000)) if "attachment" in c.uses else b""
        c.mailer = template.x_mailer or (r.choice(MAILERS) if r.random() < 0.7 else None)
        c.reply_to = f"{r.choice(words)}{r.randint(1, 999)}@{r.choice(['gmail.com', 'yahoo.com', 'hotmail.com'])}" \
            if r.random() < 0.4 else None
        c.header_order = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
                          "X-Mailer", "Reply-To", "X-Priority"]
        r.shuffle(c.header_order)
        c.boundary = _boundary(r)
        c.from_name = template.from_name or f"{r.choice(FIRST)} {r.choice(LAST)}"
        c.msgid_host = c.hosts[0]
        c.encoding = r.choice(["quoted-printable", "base64"])
        c.html_only = r.random() < 0.5
        c.company = f"{r.choice(words).title()} {r.choice(['Ltd', 'Inc', 'LLC', 'Group', 'Media', 'GmbH'])}"
        # bulk mail's markup is most of its size: inline styles on every paragraph, a navigation bar of images
        font = r.choice(["Arial,Helvetica,sans-serif", "Verdana,Geneva,sans-serif", "Tahoma,Arial,sans-serif",
                         "'Trebuchet MS',Arial,sans-serif", "Georgia,'Times New Roman',serif"])
        c.pstyle = (f"font-family:{font};font-size:{r.randint(11, 16)}px;line-height:{r.randint(16, 24)}px;"
                    f"color:#{r.getrandbits(24) & 0x555555:06x};margin:0 0 {r.randint(8, 16)}px 0;padding:0;"
                    f"text-align:{r.choice(['left', 'justify', 'left'])};mso-line-height-rule:exactly")
        c.nav = [r.choice(words) for _ in range(r.randint(3, 6))]
        legal = " ".join(r.choice(words) for _ in range(r.randint(40, 90)))
        c.footer = (f"<p>You received this message because you subscribed to {c.company} offers. "
                    f"{html.escape(legal)}</p><p>{c.company}, {r.randint(1, 9999)} {r.choice(words).title()} "
                    f"Street, Suite {r.randint(100, 999)}, {r.choice(words).title()}</p>")
        return c


def _spin(w: str, r: random.Random) -> str:
    core = w.rstrip(".,!?:;")
    group = SYN.get(core.lower())
    if not group:
        return w
    alt = r.choice(group)
    if core[:1].isupper():
        alt = alt.upper() if core.isupper() and len(core) > 1 else alt.title()
    return alt + w[len(core):]


def _boundary(r: random.Random) -> str:
    style = r.randrange(3)
    if style == 0:
        return f"----=_NextPart_000_{r.getrandbits(16):04X}_{r.getrandbits(32):08X}.{r.getrandbits(32):08X}"
    if style == 1:
        return f"b1_{r.getrandbits(128):032x}"
    return f"=_{r.getrandbits(48):012x}"


def _mixed(w: str, r: random.Random) -> str:
    bits = r.getrandbits(len(w))
    return "".join(ch.upper() if bits >> i & 1 else ch.lower() for i, ch in enumerate(w))


def _insert(w: str, piece: str, r: random.Random) -> str:
    if len(w) < 2 or "&" in w:  # never split an entity the word already holds
        return w
    k = 1 + int(r.random() * (len(w) - 1))
    return w[:k] + piece + w[k:]


def _entity(w: str, r: random.Random) -> str:
    if "&" in w:
        return w
    k = int(r.random() * len(w))
    ch = w[k]
    if not ch.isalpha():
        return w
    ent = f"&#{ord(ch)};" if r.random() < 0.5 else f"&#x{ord(ch):x};"
    return w[:k] + ent + w[k + 1:]


def _qp(data: bytes) -> bytes:
    return binascii.b2a_qp(data, istext=True)


def _b64(data: bytes) -> bytes:
    """base64 in 76-character lines, as base64.encodebytes writes it, in a third of its time."""
    b = base64.b64encode(data)
    return b"\n".join([b[i:i + 76] for i in range(0, len(b), 76)]) + b"\n"


def _token(r: random.Random, k: int) -> str:
    """k random hex digits, in one draw: tokens are on every copy's hot path."""
    return f"{r.getrandbits(4 * k):0{k}x}"


_SKINS = (
    ("<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n<html><head><meta http-equiv=\"Content-Type\" "
     "content=\"text/html; charset=utf-8\"><title>{title}</title><style type=\"text/css\">body{{margin:0;padding:0;"
     "background:#ffffff;font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#333333}}table.main{{width:600px;"
     "border:1px solid #dddddd}}td.head{{background:#003366;color:#ffffff;font-size:22px;padding:14px}}"
     "td.body{{padding:"
     "18px;line-height:20px}}a.btn{{display:inline-block;background:#ff6600;color:#ffffff;padding:10px 22px;"
     "text-decoration:none;font-weight:bold;border-radius:4px}}td.foot{{font-size:10px;color:#999999;padding:12px;"
     "border-top:1px solid #eeeeee}}p{{margin:0 0 12px 0}}.small{{font-size:11px}}</style></head>\n<body bgcolor="
     "\"#ffffff\"><table class=\"main\" align=\"center\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\">"
     "<tr><td class=\"head\">{title}</td></tr>\n<tr><td class=\"body\">\n{body}\n</td></tr>\n<tr><td class=\"foot\">"
     "{footer}</td></tr></table>\n{after}</body></html>\n"),
    ("<html>\n<head>\n<meta http-equiv=Content-Type content=\"text/html; charset=utf-8\">\n<style>\n<!--\n"
     "p.MsoNormal, li.MsoNormal, div.MsoNormal {{margin:0in;margin-bottom:.0001pt;font-size:12.0pt;"
     "font-family:\"Times New Roman\";}}\na:link, span.MsoHyperlink {{color:blue;text-decoration:underline;}}\n"
     "span.EmailStyle17 {{font-family:Arial;color:windowtext;}}\n@page Section1 {{size:8.5in 11.0in;margin:1.0in "
     "1.25in 1.0in 1.25in;}}\ndiv.Section1 {{page:Section1;}}\n-->\n</style>\n</head>\n<body lang=EN-US link=blue "
     "vlink=purple>\n<div class=Section1>\n<h2>{title}</h2>\n{body}\n<div class=MsoNormal style='font-size:8.0pt;"
     "color:gray'>{footer}</div>\n</div>\n{after}</body>\n</html>\n"),
    ("<HTML><HEAD><TITLE>{title}</TITLE></HEAD><BODY BGCOLOR=\"#FFFFFF\" TEXT=\"#000000\" LINK=\"#0000FF\">\n"
     "<CENTER><TABLE WIDTH=\"550\" BORDER=\"0\" CELLPADDING=\"6\"><TR><TD><FONT FACE=\"Verdana, Arial\" SIZE=\"4\""
     " COLOR=\"#CC0000\"><B>{title}</B></FONT></TD></TR><TR><TD><FONT FACE=\"Verdana, Arial\" SIZE=\"2\">\n{body}\n"
     "</FONT></TD></TR><TR><TD><FONT SIZE=\"1\" COLOR=\"#808080\">{footer}</FONT></TD></TR></TABLE></CENTER>\n"
     "{after}</BODY></HTML>\n"),
)
_HIDDEN = ("<div style=\"color:#ffffff;background:#ffffff\">{}</div>", "<div style=\"font-size:1px;line-height:1px\">{}"
           "</div>", "<div style=\"display:none\">{}</div>", "<font color=\"#FFFFFF\" size=\"1\">{}</font>",
           "<span style=\"font-size:0px;color:transparent\">{}</span>")


@dataclass
class Copy:
    """A rendered copy: its bytes (headers and body, without our Received) and the techniques it used."""

    data: bytes
    techniques: tuple[str, ...]


def _name_of(rcpt: str) -> str:
    local = rcpt.split("@")[0]
    part = re.split(r"[._\d]", local)[0] or local
    return part[:1].upper() + part[1:]


def render(c: SpamCampaign, rcpts: list[str], sender: str, when: datetime, encoding: str | None = None) -> Copy:
    """One copy of campaign `c` to `rcpts`, forged from `sender`: headers and MIME body, newline-separated.

    Each technique draws from its own stream (c.rt), the rest from c.rng: a copy of a run without
    one technique is the same copy without that technique's effect."""
    r = c.rng
    rt = c.rt
    t = c.template
    uses = c.uses
    used: set[str] = set()
    words = list(t.words)
    n = len(words)
    name = _name_of(rcpts[0])
    if "spintax" in uses and c.spin_idx:
        s = rt["spintax"]
        for i in c.spin_idx:
            words[i] = _spin(words[i], s)
        used.add("spintax")
    if "leet" in uses:
        s = rt["leet"]
        for i in s.sample(range(n), min(n, max(1, int(n * c.word_rate * 0.5)))):
            words[i] = words[i].translate(_LEET) if s.random() < 0.5 else _mixed(words[i], s)
        used.add("leet")
    if "zero_width" in uses:
        s = rt["zero_width"]
        for i in s.sample(range(n), min(n, max(1, int(n * c.word_rate)))):
            words[i] = _insert(words[i], s.choice(_ZW), s)
        used.add("zero_width")
    order = list(range(len(t.paragraphs)))
    paras = [list(p) for p in t.paragraphs]
    if "shuffle" in uses:
        s = rt["shuffle"]
        for p in paras:
            if len(p) > 2:
                s.shuffle(p)
        if len(order) > 3:
            mid = order[1:-1]
            s.shuffle(mid)
            order = [order[0], *mid, order[-1]]
        used.add("shuffle")
    greeting = ""
    subject = c.subjects[0]
    if "subjects" in uses:
        s = rt["subjects"]
        subject = c.subjects[s.randrange(len(c.subjects))]
        subject += s.choice([f" #{s.randint(1000, 999999)}", f" [{_token(s, s.randint(4, 8))}]",
                             f" - {s.choice(c.words)}", f" ({s.randint(1, 99)})", f" {_token(s, 6)}", ""])
        used.add("subjects")
    if "greeting" in uses:
        s = rt["greeting"]
        greeting = f"{s.choice(['Hi', 'Hello', 'Dear', 'Hey', 'Good day'])} {name},"
        if s.random() < 0.5:
            subject = s.choice([f"{name}, {subject}", f"{subject} for {name}", f"{name}: {subject}"])
        used.add("greeting")

    sh, st = rt["url_hosts"], rt["url_tokens"]

    def link(j: int) -> str:
        host = c.hosts[sh.randrange(len(c.hosts))] if len(c.hosts) > 1 else c.hosts[0]
        path = c.paths[j % len(c.paths)]
        if "url_tokens" in uses:
            tok = _token(st, st.randint(8, 16))
            return f"http://{host}{path}?id={tok}" if st.random() < 0.6 else f"http://{host}/{tok}{path}"
        return f"http://{host}{path}"

    if len(c.hosts) > 1:
        used.add("url_hosts")
    if "url_tokens" in uses:
        used.add("url_tokens")
    links = [link(j) for j in range(len(c.paths))]
    unsub = link(0).replace(c.paths[0], "/unsubscribe", 1)
    salad = ""
    if "salad" in uses:
        s = rt["salad"]
        salad = " ".join(s.choices(c.words, k=s.randint(20, 120)))
        used.add("salad")
    image = "image_only" in uses and rt["image_only"].random() < c.image_share

    # the text: paragraphs of sentences, with the campaign's links after the first paragraph
    text_paras = [" ".join(" ".join(words[t.sentences[i][0]:t.sentences[i][1]]) for i in paras[pi]) for pi in order]
    text_body = "\n\n".join(([greeting] if greeting else []) + text_paras[:1] + links + text_paras[1:]
                            + [f"To unsubscribe: {unsub}"] + ([salad] if salad else []))
    if t.has_entities:
        text_body = html.unescape(text_body)
    if image:
        s = rt["image_only"]
        used.add("image_only")
        line = " ".join(words[t.sentences[0][0]:t.sentences[0][1]][:14])
        cid = f"{_token(s, 12)}@{_token(s, 6)}"
        htm = (f"<html><body><p>{greeting} {line}</p><a href=\"{links[0]}\"><img src=\"cid:{cid}\" border=0></a>"
               f"</body></html>\n")
        w, h = s.randint(90, 160), s.randint(30, 60)
        px = bytearray(c.banner * (w * h // len(c.banner) + 1))[: w * h]
        for _ in range(3):  # per-copy noise bands: no two images hash alike
            k = s.randint(w, 4 * w)
            at = s.randrange(w * h - k)
            px[at:at + k] = s.randbytes(k)
        img = _png(w, h, bytes(px))
        img_name = f"{_token(s, 8)}.png"
        text_body = f"{greeting} {html.unescape(line)}\n{links[0]}\n"
    else:
        hw = list(words)
        comment = "comments" in uses
        sc = rt["comments"]
        if comment:
            for i in sc.sample(range(n), min(n, max(1, int(n * c.word_rate * 0.5)))):
                hw[i] = _insert(hw[i], f"<!--{_token(sc, sc.randint(3, 10))}-->", sc)
            used.add("comments")
        if "entities" in uses:
            s = rt["entities"]
            for i in s.sample(range(n), min(n, max(1, int(n * c.word_rate)))):
                hw[i] = _entity(hw[i], s)
            used.add("entities")
        blocks = []
        for k, pi in enumerate(order):
            blocks.append(f"<p style=\"{c.pstyle}\">"
                          + " ".join(" ".join(hw[t.sentences[i][0]:t.sentences[i][1]]) for i in paras[pi]) + "</p>")
            if comment and sc.random() < 0.5:
                blocks.append(f"<!-- {' '.join(sc.choices(c.words, k=sc.randint(2, 8)))} -->")
            if k == 0:
                blocks.extend(f"<p><a href=\"{u}\" class=\"btn\">{html.escape(u.split('/')[2])}</a></p>" for u in links)
        if greeting:
            blocks.insert(0, f"<p style=\"{c.pstyle}\">{greeting}</p>")
        host = links[0].split("/")[2]
        blocks.insert(0, "<table width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\"><tr>" + "".join(
            f"<td align=\"center\" style=\"padding:4px 6px;border-right:1px solid #dddddd\"><a href=\"http://{host}/"
            f"{page}.html\" target=\"_blank\" style=\"text-decoration:none;color:#0066cc\"><img src=\"http://{host}/"
            f"images/{page}.gif\" width=\"{24 + 8 * (len(page) % 5)}\" height=\"24\" alt=\"{page.title()}\" "
            f"border=\"0\" style=\"display:block\"><br>{page.title()}</a></td>" for page in c.nav) + "</tr></table>")
        after = ""
        if salad:
            after += f"<p>{salad}</p>\n"
        if "hidden_salad" in uses:
            s = rt["hidden_salad"]
            hidden = " ".join(s.choices(c.words, k=s.randint(30, 200)))
            after += s.choice(_HIDDEN).format(hidden) + "\n"
            used.add("hidden_salad")
        footer = c.footer + f"<p><a href=\"{unsub}\">Unsubscribe</a></p>"
        htm = _SKINS[c.skin].format(title=html.escape(html.unescape(subject)), body="\n".join(blocks),
                                    footer=footer, after=after)

    # MIME: the campaign's skeleton, with per-copy boundary and encoding when those techniques are on
    enc = c.encoding
    if "encoding" in uses:
        enc = rt["encoding"].choice(["quoted-printable", "base64"])
        used.add("encoding")
    enc = encoding or enc
    si = rt["ids"]
    per_copy_ids = "ids" in uses
    if per_copy_ids:
        used.add("ids")
    boundary = _boundary(si) if per_copy_ids else c.boundary

    def part(ctype: str, text: str) -> str:
        data = text.encode("utf-8")
        body = (_b64(data) if enc == "base64" else _qp(data)).decode("ascii")
        return f"Content-Type: {ctype}; charset=\"utf-8\"\nContent-Transfer-Encoding: {enc}\n\n{body}"

    if image:
        b2 = boundary + "_r"
        inner = (f"Content-Type: multipart/related; type=\"text/html\"; boundary=\"{b2}\"\n\n--{b2}\n"
                 f"{part('text/html', htm)}\n--{b2}\nContent-Type: image/png; name=\"{img_name}\"\n"
                 f"Content-Transfer-Encoding: base64\nContent-ID: <{cid}>\n\n{_b64(img).decode()}\n--{b2}--\n")
    elif c.html_only:
        inner = part("text/html", htm)
    else:
        b2 = boundary + "_a"
        inner = (f"Content-Type: multipart/alternative; boundary=\"{b2}\"\n\n--{b2}\n{part('text/plain', text_body)}"
                 f"\n--{b2}\n{part('text/html', htm)}\n--{b2}--\n")
    if c.attachment:
        s = rt["attachment"]
        used.add("attachment")
        blob = bytearray(c.attachment)
        at = s.randrange(16, len(blob))
        blob[at:at] = s.randbytes(s.randint(16, 64))
        fname = c.attachment_name.replace(".", f"_{s.randint(1000, 99999)}.", 1)
        ctype = {"pdf": "application/pdf", "zip": "application/zip", "doc": "application/msword"}[fname.rsplit(".")[-1]]
        mime = (f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\nThis is a multi-part message in MIME "
                f"format.\n\n--{boundary}\n{inner}\n--{boundary}\nContent-Type: {ctype}; name=\"{fname}\"\n"
                f"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"{fname}\"\n\n"
                f"{_b64(bytes(blob)).decode()}\n--{boundary}--\n")
    else:
        mime = inner
    # the top part's Content-Type (and, single-part, its transfer encoding) go among the message headers
    ctype_line, _, body = mime.partition("\n")
    cte_lines = []
    while body.startswith("Content-Transfer-Encoding:"):
        line, _, body = body.partition("\n")
        cte_lines.append(line)
    body = body.lstrip("\n")

    from_name = f"{si.choice(FIRST)} {si.choice(LAST)}" if per_copy_ids else c.from_name
    msgid_host = f"{_token(si, 6)}.{si.choice(c.hosts)}" if per_copy_ids else c.msgid_host
    hdr = {
        "From": f"\"{from_name}\" <{sender}>",
        "To": ", ".join(rcpts),
        "Subject": _encode_subject(subject),
        "Date": format_datetime(when - timedelta(seconds=r.randint(0, 120))),
        "Message-ID": f"<{_token(r, 20)}@{msgid_host}>",
        "MIME-Version": "1.0",
        "Content-Type": ctype_line.partition(": ")[2],
        "X-Mailer": c.mailer,
        "Reply-To": c.reply_to,
        "X-Priority": "3",
    }
    lines = [f"{k}: {hdr[k]}" for k in c.header_order if hdr[k]]
    lines.extend(cte_lines)
    if "received" in uses:
        used.add("received")
        lines[:0] = _forged_received(rt["received"], rcpts[0], when, c.words)
    return Copy(("\n".join(lines) + "\n\n" + body).encode("utf-8"), tuple(sorted(used)))


def _encode_subject(s: str) -> str:
    if s.isascii():
        return s
    return "=?utf-8?B?" + base64.b64encode(s.encode("utf-8")).decode() + "?="


def _forged_received(r: random.Random, rcpt: str, when: datetime, words: list[str]) -> list[str]:
    out = []
    t = when
    for _ in range(r.randint(1, 4)):
        t -= timedelta(seconds=r.randint(1, 3600))
        host = f"{r.choice(words)}.{r.choice(words)[:8]}.{r.choice(TLDS)}"
        ip = f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        proto = r.choice(["SMTP", "ESMTP", "Microsoft SMTPSVC(6.0.3790.0)"])
        out.append(f"Received: from {r.choice(words)} ([{ip}]) by {host} with {proto}"
                   f" id {_token(r, 12).upper()}\n\tfor <{rcpt}>; {format_datetime(t)}")
    return out


def reencode(raw: bytes) -> bytes:
    """The message as another MTA might quote it: every text part switched base64 <-> quoted-printable."""
    msg = email.message_from_bytes(raw, policy=email_policy.compat32)
    for p in msg.walk():
        if p.is_multipart() or p.get_content_maintype() != "text":
            continue
        data = p.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        cte = (p.get("Content-Transfer-Encoding") or "").lower()
        new = "quoted-printable" if cte == "base64" else "base64"
        del p["Content-Transfer-Encoding"]
        p["Content-Transfer-Encoding"] = new
        p.set_payload((_qp(data) if new == "quoted-printable" else _b64(data)).decode("ascii"))
    return msg.as_bytes()
