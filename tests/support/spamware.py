"""A small hostile copy maker for grouping tests: one spam text varied the ways spamware varies it."""

from __future__ import annotations

import email
import random
import re
from email import policy as email_policy
from email.message import EmailMessage

SALAD = ("apple river cotton window basket pencil garden silver thunder planet mirror candle harbor "
         "meadow violin lantern feather copper marble orchard saddle blanket timber glacier canyon "
         "falcon walnut ribbon compass anchor tulip velvet pebble summit lagoon cedar oyster quartz "
         "maple dune ember fjord heron ivory jasper kettle lilac nectar opal prairie quill raven sable "
         "thistle umber willow yarrow zephyr acorn bramble clover dahlia elm fern gorse hazel iris").split()
SYNONYMS = {"free": ["free", "complimentary", "no-cost"], "money": ["money", "cash", "funds"],
            "offer": ["offer", "deal", "promotion"], "now": ["now", "today", "immediately"],
            "best": ["best", "finest", "top"], "business": ["business", "company", "firm"],
            "receive": ["receive", "get", "obtain"], "email": ["email", "e-mail", "message"]}
LEET = str.maketrans("aeios", "4310$")
NAMES = ("john", "mary", "peter", "olga", "ahmed", "sara", "kim", "raj", "lucy", "omar")


def spam_text(raw: bytes) -> tuple[str, str]:
    """(subject, plain text) of a corpus spam message."""
    msg = email.message_from_bytes(raw, policy=email_policy.compat32)
    body = ""
    for p in msg.walk():
        if p.get_content_type() in ("text/plain", "text/html"):
            payload = p.get_payload(decode=True)
            if isinstance(payload, bytes):
                body = payload.decode("latin-1")
                if p.get_content_type() == "text/html":
                    body = re.sub(r"(?s)<[^>]*>", " ", body)
                break
    return str(msg.get("Subject") or "offer"), body


class Campaign:
    """One run: a text, a URL host pool, a Reply-To, a mailer; copies vary the rest."""

    def __init__(self, text: str, subject: str, seed: int, hosts: int = 5, kit: str = "") -> None:
        self.rng = random.Random(seed)
        self.kit = kit  # the spamware kit's HTML around the body ({body}), the same in every run it sends
        paras = [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.split()) >= 3]
        words = text.split()
        if len(paras) < 3:  # a one-block text: cut it into paragraphs of 25 words
            paras = [" ".join(words[i:i + 25]) for i in range(0, len(words), 25)]
        self.paras = paras[:12]
        self.subject = " ".join(subject.split())[:60]
        base = f"run{seed}"
        self.hosts = [f"{self.token(5)}.{base}-pharma{i % 3}.com" for i in range(hosts)]
        self.reply_to = f"orders@{base}-reply.net"
        self.mailer = f"Microsoft Outlook Express 6.00.{2800 + seed}"

    def token(self, k: int = 8) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(k))

    def _vary_word(self, w: str, leet: bool) -> str:
        r = self.rng
        low = w.lower().strip(".,!?")
        if low in SYNONYMS and r.random() < 0.7:
            w = r.choice(SYNONYMS[low])
        if leet and len(w) > 4 and w.isalpha() and r.random() < 0.15:
            w = w.translate(LEET)
        if r.random() < 0.1:
            w = w.upper() if r.random() < 0.5 else w.capitalize()
        return w

    def copy(self, rcpt: str, image_only: bool = False) -> bytes:
        r = self.rng
        name = rcpt.split("@")[0].split(".")[0].title()
        url = f"http://{r.choice(self.hosts)}/c/{self.token(10)}/go?u={self.token(6)}"
        paras = list(self.paras)
        r.shuffle(paras)
        html_paras = []
        for p in paras:
            words = [self._vary_word(w, leet=True) for w in p.split()]
            out = []
            for w in words:
                t = r.random()
                if t < 0.05 and len(w) > 4:  # a comment inside the word
                    k = len(w) // 2
                    w = f"{w[:k]}<!-- {self.token(6)} -->{w[k:]}"
                elif t < 0.08 and len(w) > 3:
                    w = w[:2] + "\u200b" + w[2:]
                elif t < 0.10 and w.isalpha():
                    w = "".join(f"&#{ord(c)};" if r.random() < 0.3 else c for c in w)
                out.append(w)
            html_paras.append("<p>" + " ".join(out) + "</p>")
        salad = " ".join(r.choice(SALAD) for _ in range(r.randint(20, 60)))
        hidden = f'<div style="display:none">{" ".join(r.choice(SALAD) for _ in range(40))}</div>'
        greeting = f"<p>{r.choice(['Dear', 'Hello', 'Hi'])} {name},</p>"
        if image_only:
            body_html = (f'<html><body><p>{self.paras[0][:60]}</p><a href="{url}"><img src="cid:img1"></a>'
                         f"</body></html>")
        else:
            body_html = (f"<html><body>{greeting}{hidden}{''.join(html_paras)}<p><a href=\"{url}\">Click here"
                         f"</a></p><p>Regards</p><p style=\"color:#999\">{salad}</p></body></html>")
        msg = EmailMessage()
        msg["From"] = f"{r.choice(NAMES).title()} <{self.token(6)}@{r.choice(['gmail.com', 'yahoo.com'])}>"
        msg["To"] = rcpt
        msg["Subject"] = f"{name}, {self._subject()} {self.token(r.randint(4, 7))}"
        msg["Reply-To"] = self.reply_to
        msg["Message-ID"] = f"<{self.token(16)}@{self.token(5)}.com>"
        msg["X-Mailer"] = self.mailer
        cte = "base64" if r.random() < 0.5 else "quoted-printable"
        msg.set_content(re.sub(r"(?s)<[^>]*>", " ", body_html), cte=cte)
        if self.kit:
            inner = body_html.removeprefix("<html><body>").removesuffix("</body></html>")
            body_html = self.kit.replace("{body}", inner)
        msg.add_alternative(body_html, subtype="html", cte=cte)
        if image_only or r.random() < 0.3:
            msg.add_attachment(r.randbytes(r.randint(200, 400)), maintype="image", subtype="gif",
                               filename=f"{self.token(6)}.gif")
        return msg.as_bytes()

    def _subject(self) -> str:
        return " ".join(self._vary_word(w, leet=False) for w in self.subject.split())


# A kit's page: a long style sheet in the head and a row of images before the body, as the big kits send
KIT = ("<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\">\n<html><head>"
       "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"><style type=\"text/css\">"
       + "".join(f"td.{c}{{background:#003366;color:#ffffff;font-family:Arial,Helvetica,sans-serif;"
                 f"font-size:{12 + i}px;padding:14px;border-top:1px solid #eeeeee;"
                 "text-decoration:none;font-weight:bold}\n"
                 for i, c in enumerate(("head", "body", "foot", "side", "menu", "note", "logo", "copy")))
       + "</style></head>\n<body bgcolor=\"#ffffff\"><table class=\"main\" width=\"600\"><tr>"
       + "".join(f"<td><img src=\"images/{p}.gif\" width=\"{24 + i}\" height=\"24\" "
                 f"alt=\"{p}\" border=\"0\" style=\"display:block\"></td>"
                 for i, p in enumerate(("home", "shop", "news")))
       + "</tr></table>\n{body}\n</body></html>\n")


def bounce(original: bytes, to: str, truncate: int | None = None, reencode: bool = False) -> bytes:
    """Our bounce quoting `original`: whole, cut after `truncate` bytes, or with its text parts
    re-encoded (base64 and quoted-printable swapped, as a relay converting transfer encodings does)."""
    if reencode:
        msg = email.message_from_bytes(original, policy=email_policy.default)
        for p in msg.walk():
            if p.get_content_maintype() == "text":
                cte = "quoted-printable" if p["Content-Transfer-Encoding"] == "base64" else "base64"
                p.set_content(p.get_content(), subtype=p.get_content_subtype(), cte=cte)
        original = msg.as_bytes()
    quoted = original[:truncate] if truncate else original
    return (b"From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)\nSubject: Undelivered Mail Returned to "
            b"Sender\nTo: " + to.encode() + b"\nMIME-Version: 1.0\nContent-Type: multipart/report; "
            b"report-type=delivery-status; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain\n\nsorry\n"
            b"--BB\nContent-Type: message/rfc822\n\n" + quoted + b"\n--BB--\n")
