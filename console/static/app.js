// spoolsweep console: every node is built with createElement/textContent; message data is never parsed as HTML.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#0b63ce", "#b42318", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#6e7781", "#953800"];
  let csrf = null;
  let timer = null;
  let seq = 0;  // bumped on every navigation; a page whose data arrives after a newer navigation is dropped

  class Stale extends Error {}

  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of kids.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      n.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return n;
  }
  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en") : String(n ?? "—"));
  const enc = encodeURIComponent;
  const badge = (v) => el("span", { class: "verdict verdict-" + v, text: v });

  async function api(path, body) {
    const asked = seq;
    const opts = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      if (!csrf) csrf = (await api("/api/session")).csrf;
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
    if (body === undefined && path !== "/api/session" && asked !== seq) throw new Stale();
    return data;
  }

  function show(...nodes) {
    const main = document.getElementById("main");
    main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  }

  function table(head, rows) {
    return el("div", { class: "wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", { "data-label": head[i] }, c)))))));
  }

  function spread(s) {
    if (!s || !s.top) return "—";
    return s.distinct + " distinct: " + s.top.map(([k, n]) => k + " (" + n + ")").join(", ");
  }

  async function incidents() {
    const d = await api("/api/incidents");
    show(el("h1", { text: "Incidents" }),
      d.incidents.length ? table(["Incident", "Host", "When", "Messages", "Status", "Blocklists"],
        d.incidents.map((i) => [el("a", { href: "#/i/" + enc(i.id), text: i.id }), i.host || "—", i.when || "—",
          fmt(i.size), i.status, String(i.blocklist)])) : el("p", { text: "No incidents in this store yet." }));
  }

  function nav(id, here) {
    const links = [["", "Overview"], ["/review", "Review"], ["/messages", "Messages"], ["/approve", "Approve"], ["/progress", "Replay progress"],
      ["/blocklists", "Blocklists"]];
    return el("nav", { class: "nav", "aria-label": "incident" }, el("a", { href: "#/", text: "← Incidents" }),
      links.map(([p, t]) => el("a", { href: "#/i/" + enc(id) + p, "aria-current": p === here ? "page" : null, text: t })));
  }

  function verdictButtons(current, onpick) {
    return el("div", { class: "buttons", role: "group", "aria-label": "change verdict" },
      ["valid", "spam", "review"].map((v) => el("button", {
        type: "button", disabled: v === current, "data-verdict": v,
        onclick: () => onpick(v), text: "Mark " + v,
      })));
  }

  // who is reviewing: kept in this browser only, sent with every decision
  const reviewer = el("input", { type: "text", id: "reviewer", size: 12, autocomplete: "name",
    value: localStorage.getItem("spoolsweep.reviewer") || "" });
  reviewer.addEventListener("change", () => localStorage.setItem("spoolsweep.reviewer", reviewer.value.trim()));
  document.querySelector("header.top").appendChild(el("label", { class: "who" }, "reviewer ", reviewer));
  const who = () => reviewer.value.trim() || "console";

  async function decide(id, kind, target, verdict) {
    await api("/api/incidents/" + enc(id) + "/verdicts", { kind, target: String(target), verdict, by: who() });
  }

  function chart(tl) {
    if (!tl.series || !tl.series.length) return el("p", { class: "muted", text: "No arrival times." });
    const W = 800, H = 220, P = 30, n = tl.buckets;
    const totals = new Array(n).fill(0);
    tl.series.forEach((s) => s.counts.forEach((c, i) => { totals[i] += c; }));
    const max = Math.max(1, ...totals);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "messages arriving per " + Math.round(tl.bucket_seconds / 60) + " minutes, by campaign");
    const bw = (W - P) / n;
    const base = new Array(n).fill(0);
    tl.series.forEach((s, si) => {
      s.counts.forEach((c, i) => {
        if (!c) return;
        const r = document.createElementNS(SVG, "rect");
        const h = (c / max) * (H - P);
        base[i] += h;
        r.setAttribute("x", String(P + i * bw));
        r.setAttribute("y", String(H - P - base[i]));
        r.setAttribute("width", String(Math.max(1, bw - 1)));
        r.setAttribute("height", String(h));
        r.setAttribute("fill", COLORS[si % COLORS.length]);
        const t = document.createElementNS(SVG, "title");
        t.textContent = (s.campaign === "other" ? "other" : "campaign " + s.campaign) + ": " + c;
        r.appendChild(t);
        svg.appendChild(r);
      });
    });
    const axis = document.createElementNS(SVG, "text");
    axis.setAttribute("x", "2"); axis.setAttribute("y", "12"); axis.setAttribute("font-size", "11");
    axis.textContent = String(max);
    svg.appendChild(axis);
    const start = document.createElementNS(SVG, "text");
    start.setAttribute("x", String(P)); start.setAttribute("y", String(H - 10)); start.setAttribute("font-size", "11");
    start.textContent = tl.start;
    svg.appendChild(start);
    const legend = el("div", { class: "legend" }, tl.series.map((s, si) => {
      const sp = el("span", { text: (s.campaign === "other" ? "other" : "#" + s.campaign + " " + s.label) });
      sp.style.setProperty("--c", COLORS[si % COLORS.length]);
      return sp;
    }));
    return el("div", { class: "chart" }, svg, legend);
  }

  // a small bar chart of arrivals over the incident's timeline (the same buckets as the big chart)
  function spark(counts, bucketSeconds, what) {
    const W = 240, H = 36, n = counts.length;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const total = counts.reduce((a, b) => a + b, 0);
    svg.setAttribute("aria-label", what + ": " + total + " arrivals over " + n + " steps of " + Math.round((bucketSeconds || 60) / 60) + " minutes");
    const max = Math.max(1, ...counts), bw = W / Math.max(1, n);
    counts.forEach((c, i) => {
      if (!c) return;
      const r = document.createElementNS(SVG, "rect"), h = Math.max(1, (c / max) * (H - 2));
      r.setAttribute("x", String(i * bw)); r.setAttribute("y", String(H - h));
      r.setAttribute("width", String(Math.max(1, bw - 1))); r.setAttribute("height", String(h));
      const t = document.createElementNS(SVG, "title");
      t.textContent = c + " arrived";
      r.appendChild(t);
      svg.appendChild(r);
    });
    return svg;
  }

  // how the client addresses spread: the commonest as shares of one bar, the rest as "other"
  function ipBar(ips) {
    const total = ips.top.reduce((a, [, c]) => a + c, 0) + ips.other;
    const bar = el("div", { class: "ipbar", role: "img", "aria-label": "client addresses: " + ips.distinct + " in " + ips.networks + " networks" });
    const parts = ips.top.map(([ip, c], i) => [ip, c, COLORS[i % COLORS.length]]);
    if (ips.other) parts.push(["other", ips.other, "#c9ced6"]);
    parts.forEach(([ip, c, color]) => {
      const sp = el("span", { title: ip + ": " + c });
      sp.style.width = (100 * c / Math.max(1, total)) + "%";
      sp.style.background = color;
      bar.appendChild(sp);
    });
    return el("div", { class: "ips" }, bar, el("div", { class: "muted small", text: fmt(ips.distinct) + " client address" +
      (ips.distinct === 1 ? "" : "es") + " in " + fmt(ips.networks) + " network" + (ips.networks === 1 ? "" : "s") + (ips.top.length ? " · " +
      ips.top.slice(0, 3).map(([ip, c]) => ip + " " + fmt(c)).join(", ") : "") }));
  }

  function pictureOf(p, bucketSeconds, what) {
    if (!p) return null;
    return el("div", { class: "pictures" }, p.arrivals.length ? spark(p.arrivals, bucketSeconds, what) : el("span", { class: "muted small", text: "no arrival times" }), ipBar(p.ips));
  }

  function msgRows(id, msgs) {
    return table(["Subject", "From", "To", "Client", "Verdict"], msgs.map((m) => [
      el("a", { href: "#/i/" + enc(id) + "/m/" + enc(m.id), class: "subject", text: m.subject || "(no subject)" }),
      m.from ?? "—", m.rcpt.join(", ") + (m.rcpt_count > m.rcpt.length ? " +" + (m.rcpt_count - m.rcpt.length) : ""),
      m.client || "—", badge(m.verdict)]));
  }

  async function overview(id, params) {
    const shown = Math.max(60, parseInt(new URLSearchParams(params || "").get("campaigns") || "60", 10) || 60);
    const [d, tl] = await Promise.all([api("/api/incidents/" + enc(id) + "?campaigns=" + shown),
      api("/api/incidents/" + enc(id) + "/timeline")]);
    const t = d.totals;
    const stats = el("div", { class: "totals" }, [["messages", t.messages], ["valid", t.valid], ["spam", t.spam],
      ["review", t.review], ["campaigns", t.campaigns]].map(([k, v]) => el("div", { class: "stat" }, el("b", { text: fmt(v) }), k)));
    const parts = [nav(id, ""), el("h1", { text: "Incident " + d.id }),
      el("p", { class: "muted", text: "host " + (d.host || "—") + " · status " + d.status + " · " + d.snapshot.format }), stats];
    // what triage asks the admin to read before approving (a policy that matched too little)
    (d.warnings || []).forEach((w) => parts.push(el("p", { class: "warning", role: "alert", text: "Warning: " + w })));
    if (d.policy) parts.push(el("p", { class: "muted", text: "policy: " + d.policy.source }));
    if (d.review_first.length) {
      parts.push(el("h2", { text: "Needs review first (" + fmt(t.review) + ")" }),
        el("p", {}, el("a", { href: "#/i/" + enc(id) + "/review", class: "primary-link", text: "Review them by group →" })),
        msgRows(id, d.review_first.slice(0, 15)),
        el("p", {}, el("a", { href: "#/i/" + enc(id) + "/messages?verdict=review", text: "All " + fmt(t.review) + " review messages →" })));
    }
    parts.push(el("h2", { text: "Campaigns, largest first" }), el("div", { class: "cards" }, d.campaigns.map((c) =>
      el("section", { class: "card", "aria-label": "campaign " + c.id, "data-campaign": c.id },
        el("h3", {}, "#" + c.id + " · " + fmt(c.size) + " messages · ", badge(c.verdict)),
        el("div", { class: "title subject", text: c.subject || c.sample_subjects[0] || "(no subject)" }),
        c.phrase ? el("div", { class: "phrase", text: "“" + c.phrase + "…”" }) : null,
        el("div", { class: "pic", "data-picture": c.id }),
        el("ul", {}, c.sample_subjects.slice(0, 4).map((s) => el("li", { class: "sample", text: s }))),
        el("dl", { class: "dl" }, el("dt", { text: "senders" }), el("dd", { text: spread(c.sender_domains) }),
          el("dt", { text: "recipients" }), el("dd", { text: spread(c.recipient_domains) }),
          el("dt", { text: "client IPs" }), el("dd", { text: spread(c.client_ips) })),
        el("ul", {}, c.reasons.map((r) => el("li", { text: r.text }))),
        c.decision ? el("p", { class: "muted", text: "changed from " + c.triage_verdict + " by " + c.decision.by + " at " + c.decision.at }) : null,
        el("div", { class: "buttons" }, el("a", { href: "#/i/" + enc(id) + "/messages?campaign=" + c.id, text: "Messages" })),
        verdictButtons(c.verdict, async (v) => {
          // replaying a whole campaign is the costly mistake: ask first
          if (v === "valid" && !window.confirm("Mark all " + c.size + " messages of campaign #" + c.id + " valid? They will be replayed.")) return;
          await decide(id, "campaign", c.id, v); route();
        })))));
    if (d.campaigns_total > d.campaigns.length) {
      parts.push(el("p", {}, el("span", { class: "muted", text: "showing the " + fmt(d.campaigns.length) + " largest of " +
        fmt(d.campaigns_total) + " campaigns · " }),
        el("a", { href: "#/i/" + enc(id) + "?campaigns=" + (shown + 200), text: "Show 200 more" })));
    }
    parts.push(el("h2", { text: "Arrivals over time" }), chart(tl));
    parts.push(el("h2", { text: "Valid mail by sender → recipient domain" }),
      table(["Sender domain", "Recipient domain", "Messages"], d.valid_groups.slice(0, 25).map((g) => [g.sender_domain, g.recipient_domain, fmt(g.messages)])));
    parts.push(el("h2", { text: "Accounts" }), d.accounts.length ? table(["Account", "Messages", "External rcpts", "Client IPs", "Compromised", "Summary"],
      d.accounts.map((a) => [a.account, fmt(a.messages), fmt(a.external_recipients), fmt(a.client_ips),
        a.compromised ? "YES — change its password" : "no", a.summary])) : el("p", { class: "muted", text: "No authenticated senders." }));
    if (d.decisions.length) {
      parts.push(el("h2", { text: "Decisions" }), table(["When", "Who", "What", "Verdict"],
        d.decisions.map((x) => [x.at, x.by, x.kind + " " + x.target, x.verdict])));
    }
    show(...parts);
    // the campaigns' pictures come after the page, in one call for the cards shown
    const ids = d.campaigns.slice(0, 500).map((c) => c.id);
    if (ids.length) {
      const pics = await api("/api/incidents/" + enc(id) + "/pictures?kind=campaign&ids=" + ids.join(","));
      document.querySelectorAll("div.pic[data-picture]").forEach((n) => {
        const p = pics.pictures[n.dataset.picture];
        if (p && (p.arrivals.length || p.ips.distinct)) n.replaceChildren(pictureOf(p, pics.bucket_seconds, "campaign " + n.dataset.picture));
      });
    }
  }

  let reviewFocus = { key: "", at: 0 };  // which group has the keyboard on the review page, kept across re-renders

  function groupCard(id, g, gi, bucketSeconds, onpick, onundo) {
    const shared = Object.entries(g.shared);
    const now = Object.entries(g.now).map(([v, n]) => fmt(n) + " " + v).join(", ");
    return el("section", { class: "card group" + (g.decision ? " decided" : ""), tabindex: "-1", "data-group": g.id, "data-index": gi,
      "aria-label": "review group " + g.id + ", " + g.messages + " messages" },
      el("h3", {}, "#" + g.id + " · " + fmt(g.messages) + " message" + (g.messages === 1 ? "" : "s") + " · ", badge(g.verdict),
        el("span", { class: "muted", text: g.decision ? " decided" : " undecided" })),
      el("p", { class: "summary-line", text: g.summary }),
      el("p", { class: "suggest" }, "Suggested: ", badge(g.suggested), " " + g.suggested_reason),
      el("dl", { class: "dl" }, el("dt", { text: "held by" }), el("dd", { text: g.rule }),
        shared.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
        el("dt", { text: "senders" }), el("dd", { text: spread(g.sender_domains) }),
        el("dt", { text: "recipients" }), el("dd", { text: spread(g.recipient_domains) }),
        g.accounts.distinct ? [el("dt", { text: "accounts" }), el("dd", { text: spread(g.accounts) })] : null,
        g.campaigns.length ? [el("dt", { text: "campaigns" }), el("dd", {}, g.campaigns.slice(0, 6).map((c) =>
          el("a", { href: "#/i/" + enc(id) + "/messages?campaign=" + c, text: "#" + c + " " })))] : null,
        el("dt", { text: "arrived" }), el("dd", { text: (g.first_seen || "—") + " → " + (g.last_seen || "—") }),
        el("dt", { text: "members now" }), el("dd", { class: "now", text: now })),
      pictureOf({ arrivals: g.arrivals, ips: g.ips }, bucketSeconds, "group " + g.id),
      el("ul", { class: "samples" }, g.samples.map((m) => el("li", {},
        el("a", { href: "#/i/" + enc(id) + "/m/" + enc(m.id), class: "subject", text: m.subject || "(no subject)" }),
        el("span", { class: "muted", text: " · " + (m.from ?? "—") + " · " + (m.client || "no client") })))),
      g.decision ? el("p", { class: "muted decision", text: "marked " + g.decision.verdict + " by " + g.decision.by + " at " + g.decision.at }) : null,
      el("div", { class: "buttons" }, verdictButtons(g.decision ? g.verdict : null, onpick),
        g.decision ? el("button", { type: "button", "data-action": "undo", onclick: onundo, text: "Undo" }) : null,
        el("a", { href: "#/i/" + enc(id) + "/review/g/" + g.id, "data-action": "open", text: "All " + fmt(g.messages) + " messages" })));
  }

  async function review(id, params) {
    const q = new URLSearchParams(params || "");
    const page = Math.max(1, parseInt(q.get("page") || "1", 10) || 1);
    const d = await api("/api/incidents/" + enc(id) + "/review-groups?page=" + page);
    const u = d.undecided;
    const key = id + "?" + page;
    if (reviewFocus.key !== key) reviewFocus = { key, at: Math.max(0, d.groups.findIndex((g) => !g.decision)) };
    const rerender = () => route();
    const cards = d.groups.map((g, gi) => groupCard(id, g, gi, d.bucket_seconds, async (v) => {
      // replaying a whole group is the costly mistake: ask first
      if (v === "valid" && !window.confirm("Mark all " + g.messages + " messages of group #" + g.id + " valid? They will be replayed.")) return;
      await api("/api/incidents/" + enc(id) + "/review-groups/" + g.id + "/decision", { verdict: v, by: who() });
      reviewFocus = { key, at: Math.min(d.groups.length - 1, gi + 1) };
      await rerender();
    }, async () => {
      await api("/api/incidents/" + enc(id) + "/review-groups/" + g.id + "/decision", { verdict: null, by: who() });
      reviewFocus = { key, at: gi };
      await rerender();
    }));
    const pages = Math.max(1, Math.ceil(d.total / d.per_page));
    const go = (p) => { location.hash = "#/i/" + enc(id) + "/review?page=" + p; };
    show(nav(id, "/review"), el("h1", { text: "Review by group" }),
      el("p", { class: "counter", role: "status", id: "undecided" }, el("b", { text: fmt(u.messages) }), " messages in ",
        el("b", { text: fmt(u.groups) }), " groups still undecided · " + fmt(u.messages_total) + " held for review in " + fmt(u.groups_total) + " groups"),
      el("p", { class: "muted small", text: "Keys: j / k next / previous group · v valid · s spam · r keep held for review · u undo · o open its messages" }),
      d.groups.length ? el("div", { class: "groups" }, cards) : el("p", { text: "Nothing is held for review." }),
      pages > 1 ? el("div", { class: "buttons" }, el("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1), text: "← Larger groups" }),
        el("span", { text: "page " + page + " of " + pages }),
        el("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1), text: "Smaller groups →" })) : null);
    focusGroup(reviewFocus.at);
  }

  function focusGroup(i) {
    const cards = document.querySelectorAll("section.group");
    if (!cards.length) return;
    const k = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c) => c.classList.remove("focused"));
    cards[k].classList.add("focused");
    cards[k].focus({ preventScroll: true });
    cards[k].scrollIntoView({ block: "nearest" });
    reviewFocus.at = k;
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !/\/review(\?|$)/.test(document.getElementById("main").dataset.route || "")) return;
    if (ev.target instanceof HTMLElement && ev.target.closest("input, textarea, select")) return;
    const card = document.querySelectorAll("section.group")[reviewFocus.at];
    const press = (sel) => { const b = card && card.querySelector(sel); if (b && !b.disabled) b.click(); };
    const k = ev.key.toLowerCase();
    if (k === "j" || k === "n") focusGroup(reviewFocus.at + 1);
    else if (k === "k" || k === "p") focusGroup(reviewFocus.at - 1);
    else if (k === "v") press("button[data-verdict='valid']");
    else if (k === "s") press("button[data-verdict='spam']");
    else if (k === "r") press("button[data-verdict='review']");
    else if (k === "u") press("button[data-action='undo']");
    else if (k === "o") press("a[data-action='open']");
    else return;
    ev.preventDefault();
  });

  async function groupMessages(id, gid, params) {
    const q = new URLSearchParams(params || "");
    const page = Math.max(1, parseInt(q.get("page") || "1", 10) || 1);
    const d = await api("/api/incidents/" + enc(id) + "/review-groups/" + enc(gid) + "/messages?page=" + page);
    const pages = Math.max(1, Math.ceil(d.total / d.per_page));
    const go = (p) => { location.hash = "#/i/" + enc(id) + "/review/g/" + enc(gid) + "?page=" + p; };
    show(nav(id, "/review"), el("h1", { text: "Review group #" + gid + " (" + fmt(d.total) + " messages)" }),
      el("p", {}, el("a", { href: "#/i/" + enc(id) + "/review", text: "← all groups" })), msgRows(id, d.messages),
      el("div", { class: "buttons" }, el("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1), text: "← Previous" }),
        el("span", { text: "page " + page + " of " + pages }),
        el("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1), text: "Next →" })));
  }

  async function messages(id, params) {
    const q = new URLSearchParams(params);
    if (!q.get("per_page")) q.set("per_page", "50");
    const d = await api("/api/incidents/" + enc(id) + "/messages?" + q.toString());
    const page = d.page, pages = Math.max(1, Math.ceil(d.total / d.per_page));
    const go = (p) => { q.set("page", String(p)); location.hash = "#/i/" + enc(id) + "/messages?" + q.toString(); };
    const verdict = el("select", { name: "verdict" }, ["", "valid", "spam", "review"].map((v) =>
      el("option", { value: v, selected: q.get("verdict") === v || (!q.get("verdict") && !v), text: v || "any" })));
    const search = el("input", { type: "search", name: "q", value: q.get("q") || "" });
    const form = el("form", { class: "filters", onsubmit: (e) => {
      e.preventDefault(); q.set("verdict", verdict.value); q.set("q", search.value); go(1);
    } }, el("label", {}, "verdict", verdict), el("label", {}, "search", search), el("button", { type: "submit", text: "Filter" }),
      q.get("campaign") ? el("span", { class: "muted", text: "campaign " + q.get("campaign") }) : null);
    show(nav(id, "/messages"), el("h1", { text: "Messages (" + fmt(d.total) + ")" }), form, msgRows(id, d.messages),
      el("div", { class: "buttons" }, el("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1), text: "← Previous" }),
        el("span", { text: "page " + page + " of " + pages }),
        el("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1), text: "Next →" })));
  }

  async function message(id, mid) {
    const m = await api("/api/incidents/" + enc(id) + "/messages/" + enc(mid));
    const e = m.envelope;
    show(nav(id, "/m"), el("h1", { class: "subject", text: m.subject || "(no subject)" }),
      el("p", {}, badge(m.verdict), " triage said " + m.triage_verdict + " · campaign " + (m.campaign ?? "none") + " · " + fmt(m.size) + " bytes · read from " + m.source),
      verdictButtons(m.verdict, async (v) => { await decide(id, "message", m.id, v); route(); }),
      el("h2", { text: "Reasons" }), el("ul", {}, m.reasons.map((r) => el("li", { text: r.text + " [" + r.weight + "]" }))),
      el("h2", { text: "Envelope" }), el("dl", { class: "dl" }, ["mail_from", "rcpt_to", "client_address", "client_name", "helo",
        "sasl_username", "arrival_time", "queue_id"].map((k) => [el("dt", { text: k }),
        el("dd", { text: Array.isArray(e[k]) ? e[k].join(", ") : (e[k] ?? "—") })])),
      el("h2", { text: "Headers" }), m.headers.length ? el("pre", { text: m.headers.map(([k, v]) => k + ": " + v).join("\n") })
        : el("p", { class: "muted", text: "The snapshot is not in this store; showing manifest data." }),
      el("h2", { text: "Body (as text, never rendered)" }), el("pre", { text: m.body ?? "—" }),
      el("h2", { text: "Attachments" }), m.attachments.length ? table(["File", "Type", "Bytes"],
        m.attachments.map((a) => [a.filename || "(unnamed)", a.content_type || "—", fmt(a.size)])) : el("p", { text: "none" }));
  }

  async function approve(id) {
    const s = await api("/api/incidents/" + enc(id) + "/approval-summary");
    const out = el("div", {});
    const by = el("input", { type: "text", name: "by", required: true, autocomplete: "name", value: reviewer.value.trim() });
    const step1 = el("button", { type: "button", class: "primary", onclick: () => {
      step1.disabled = true;
      const box = el("form", { class: "confirm", onsubmit: async (ev) => {
        ev.preventDefault();
        if (!by.value.trim()) { by.focus(); return; }
        try {
          const r = await api("/api/incidents/" + enc(id) + "/approve", { digest: s.digest, by: by.value.trim() });
          out.replaceChildren(el("p", { role: "status", text: (r.new ? "Approved: " : "Already approved: ") + r.key }),
            el("a", { href: "#/i/" + enc(id) + "/progress", text: "Watch the replay" }));
        } catch (err) { out.replaceChildren(el("p", { class: "error", role: "alert", text: err.message })); }
      } }, el("p", {}, el("strong", { text: "Confirm: " + s.text + "." })),
        el("p", { text: "This writes an approval that cannot be changed. Spam will be deleted from the queue." }),
        el("label", {}, "approved by", by),
        el("div", { class: "buttons" }, el("button", { type: "submit", class: "danger", text: "Confirm approval" }),
          el("button", { type: "button", onclick: () => route(), text: "Cancel" })));
      out.replaceChildren(box);
      by.focus();
    }, text: "Approve…" });
    show(nav(id, "/approve"), el("h1", { text: "Approve incident " + id }),
      el("p", { class: "summary", text: s.text }),
      el("p", { class: "muted", text: fmt(s.overrides) + " verdicts changed in review · review messages are held, never replayed or purged" }),
      el("h2", { text: "Decided in review" }),
      s.decided.lines.length ? el("ul", { class: "decided" }, s.decided.lines.map((x) => el("li", { text: x })))
        : el("p", { class: "muted", text: "Nothing decided yet: the triage verdicts stand." }),
      s.approvals.length ? el("p", { text: "Existing approvals: " + s.approvals.join(", ") }) : null,
      step1, out);
  }

  async function progress(id) {
    const d = await api("/api/incidents/" + enc(id) + "/receipts");
    const t = d.totals;
    show(nav(id, "/progress"), el("h1", { text: "Replay progress" }),
      el("div", { class: "totals", role: "status" }, Object.entries(t).map(([k, v]) => el("div", { class: "stat" }, el("b", { text: fmt(v) }), k))),
      d.receipts.length ? table(["Host", "Instruction", "Finished", "Counts"], d.receipts.map((r) => [r.host || "—",
        r.instruction_id || r.key, r.refused ? "refused: " + r.refused : (r.finished ? "yes" : "running"),
        r.counts ? Object.entries(r.counts).map(([k, v]) => k + " " + v).join(", ") : (r.error || "")]))
        : el("p", { class: "muted", text: "No receipts from the agent yet." }));
    timer = setTimeout(() => { if (location.hash.endsWith("/progress")) route(); }, 3000);
  }

  function value(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "string") {
      return /^https?:\/\//.test(v) ? el("a", { href: v, rel: "noopener noreferrer", target: "_blank", text: v }) : v;
    }
    if (Array.isArray(v)) return el("ul", {}, v.map((x) => el("li", {}, value(x))));
    if (typeof v === "object") return el("dl", { class: "dl" }, Object.entries(v).map(([k, x]) => [el("dt", { text: k }), el("dd", {}, value(x))]));
    return String(v);
  }

  async function blocklists(id) {
    const d = await api("/api/incidents/" + enc(id) + "/blocklists");
    show(nav(id, "/blocklists"), el("h1", { text: "Blocklists" }),
      d.report ? value(d.report) : el("p", { class: "muted", text: "Not checked yet." }));
  }

  async function route() {
    clearTimeout(timer);
    const mine = ++seq;
    const routed = location.hash;
    const h = routed.slice(1) || "/";
    const [path, query] = h.split("?");
    const p = path.split("/").filter(Boolean).map(decodeURIComponent);
    try {
      if (!p.length) await incidents();
      else if (p[0] === "i" && p.length === 2) await overview(p[1], query || "");
      else if (p[0] === "i" && p[2] === "messages") await messages(p[1], query || "");
      else if (p[0] === "i" && p[2] === "review" && p[3] === "g") await groupMessages(p[1], p[4], query || "");
      else if (p[0] === "i" && p[2] === "review") await review(p[1], query || "");
      else if (p[0] === "i" && p[2] === "m") await message(p[1], p[3]);
      else if (p[0] === "i" && p[2] === "approve") await approve(p[1]);
      else if (p[0] === "i" && p[2] === "progress") await progress(p[1]);
      else if (p[0] === "i" && p[2] === "blocklists") await blocklists(p[1]);
      else show(el("p", { text: "Unknown page." }));
      if (mine !== seq) return;
      document.title = "spoolsweep · " + (p[1] || "incidents");
      document.getElementById("main").dataset.route = routed;  // lets tests wait for a finished page
    } catch (err) {
      if (err instanceof Stale || mine !== seq) return;
      show(el("p", { class: "error", role: "alert", text: "Error: " + err.message }), el("a", { href: "#/", text: "Incidents" }));
    }
  }

  // after navigating, keyboard focus starts at the new page's content
  window.addEventListener("hashchange", () => route().then(() => document.getElementById("main").focus({ preventScroll: true })));
  route();
})();
