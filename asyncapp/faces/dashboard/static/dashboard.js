// asyncapp dashboard: relative and local times, live regions that keep what the reader
// has, and forms sent without leaving the page.
// Every page works without this script; it only adds to them.
"use strict";

(function () {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const localFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });

  // "in 3 s", "2 min ago", "5 h ago", "in 2 d": what an operator scans for.
  function relative(moment, now) {
    const seconds = Math.round((moment - now) / 1000);
    const size = Math.abs(seconds);
    let text;
    if (size < 1) return "now";
    if (size < 60) text = size + " s";
    else if (size < 3600) text = Math.floor(size / 60) + " min";
    else if (size < 86400) text = Math.floor(size / 3600) + " h " + Math.floor((size % 3600) / 60) + " min";
    else text = Math.floor(size / 86400) + " d " + Math.floor((size % 86400) / 3600) + " h";
    return seconds > 0 ? "in " + text : text + " ago";
  }

  // <time datetime="..."> holds the exact UTC time from the server; show it relative,
  // with the exact UTC and local times as its tooltip and on focus.
  function localize(root) {
    const now = Date.now();
    for (const el of root.querySelectorAll("time[datetime]")) {
      if (el.classList.contains("relative")) continue;
      const moment = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(moment.getTime())) continue;
      const local = document.createElement("span");
      local.className = "local";
      local.textContent = localFormat.format(moment) + " (" + zone + ")";
      const rel = document.createElement("span");
      rel.className = "rel";
      rel.textContent = relative(moment, now);
      el.prepend(rel);
      el.append(local);
      const exact = el.querySelector(".exact");
      el.title = (exact ? exact.textContent + "\n" : "") + local.textContent;
      el.classList.add("relative");
    }
  }

  function tick() {
    const now = Date.now();
    for (const rel of document.querySelectorAll("time.relative > .rel")) {
      const moment = new Date(rel.parentElement.getAttribute("datetime"));
      rel.textContent = relative(moment, now);
    }
    showLive();
  }

  const flash = document.getElementById("flash");
  function say(text, kind) {
    if (!flash) return;
    const p = document.createElement("p");
    p.className = "msg msg-" + kind;
    p.textContent = text;
    flash.replaceChildren(p);
  }

  // -- live regions ---------------------------------------------------------------
  // Ask the page's URL with ?live=1 and swap in the regions whose hash changed,
  // keeping the scroll position, the focus, the open <details> and, while the pointer
  // is over a table, its rows: a change of rows waits until the pointer leaves.
  const main = document.querySelector("main[data-live-url]");
  const every = main ? Number(main.dataset.liveEvery) || 2000 : 0;
  let timer = null;
  let mode = "live"; // live, paused (by the reader), stale (no answer), ended (logged out)
  let polling = false;
  let again = false;
  let lastUpdate = Date.now();
  let refreshes = 0;
  const pending = new Map(); // region id -> {html, hash} waiting for the pointer to leave
  let bar = null;

  function rowKeys(root) {
    return Array.from(root.querySelectorAll("tr[data-job], tr[data-run]"),
      (tr) => tr.dataset.job || tr.dataset.run).join("\n");
  }

  // Where the focus is, said in terms that survive re-rendering the region.
  function focusKey(el) {
    const active = document.activeElement;
    if (!active || active === document.body || !el.contains(active)) return null;
    if (active.id) return { selector: "#" + CSS.escape(active.id) };
    const row = active.closest("[data-key], tr[data-job], tr[data-run]");
    const scope = row || el;
    const all = Array.from(scope.querySelectorAll("a, button, input, select, textarea, summary, [tabindex]"));
    let selector = null;
    if (row) {
      const attr = row.dataset.key ? "data-key" : row.dataset.job ? "data-job" : "data-run";
      selector = "[" + attr + "='" + CSS.escape(row.getAttribute(attr)) + "']";
    }
    return { selector, index: all.indexOf(active), name: active.getAttribute("name") };
  }

  function refocus(el, key) {
    if (!key) return;
    let target = null;
    if (key.index === undefined) {
      target = el.querySelector(key.selector);
    } else {
      const scope = key.selector ? el.querySelector(key.selector) : el;
      if (scope) {
        const all = scope.querySelectorAll("a, button, input, select, textarea, summary, [tabindex]");
        target = all[key.index] || null;
      }
      if (!target && key.name) target = el.querySelector("[name='" + CSS.escape(key.name) + "']");
    }
    (target || flash).focus({ preventScroll: true });
  }

  function swap(el, html, hash) {
    const open = new Set(Array.from(el.querySelectorAll("details[data-key][open]"), (d) => d.dataset.key));
    const closed = new Set(Array.from(el.querySelectorAll("details[data-key]:not([open])"), (d) => d.dataset.key));
    const focus = focusKey(el);
    const scrolls = Array.from(el.querySelectorAll(".table-wrap"), (box) => box.scrollLeft);
    const x = window.scrollX;
    const y = window.scrollY;
    el.innerHTML = html;
    el.dataset.liveHash = hash;
    for (const details of el.querySelectorAll("details[data-key]")) {
      if (open.has(details.dataset.key)) details.open = true;
      else if (closed.has(details.dataset.key)) details.open = false;
    }
    el.querySelectorAll(".table-wrap").forEach((box, i) => { box.scrollLeft = scrolls[i] || 0; });
    localize(el);
    refocus(el, focus);
    window.scrollTo(x, y);
  }

  function apply(id, region, now) {
    const el = document.getElementById(id);
    if (!el || el.dataset.liveHash === region.hash) return;
    const incoming = document.createElement("template");
    incoming.innerHTML = region.html;
    if (!now && el.matches(":hover") && rowKeys(incoming.content) !== rowKeys(el)) {
      pending.set(id, region); // rows would move under the pointer: wait
      return;
    }
    pending.delete(id);
    swap(el, region.html, region.hash);
  }

  document.addEventListener("mouseout", (event) => {
    for (const [id, region] of pending) {
      const el = document.getElementById(id);
      if (el && !el.contains(event.relatedTarget)) apply(id, region, true);
    }
    showLive();
  });

  function showLive() {
    if (!bar) return;
    const age = Math.max(0, Math.round((Date.now() - lastUpdate) / 1000));
    const text = bar.querySelector(".live-age");
    const button = bar.querySelector("button");
    bar.dataset.state = mode;
    main.dataset.liveState = mode;
    const waiting = pending.size ? " New or moved rows wait until the pointer leaves the table." : "";
    if (mode === "live") text.textContent = "Live: updated " + age + " s ago." + waiting;
    else if (mode === "paused") text.textContent = "Live updates held; updated " + age + " s ago.";
    else if (mode === "stale") text.textContent = "Not updating: the server does not answer (last update " + age + " s ago). Trying again.";
    button.textContent = mode === "paused" ? "Continue updates" : "Hold updates";
    button.setAttribute("aria-pressed", mode === "paused" ? "true" : "false");
    button.hidden = mode === "ended";
  }

  function ended(text, loginUrl) {
    mode = "ended";
    clearTimeout(timer);
    const label = bar.querySelector(".live-age");
    label.textContent = text + " ";
    if (loginUrl) {
      const link = document.createElement("a");
      link.href = loginUrl;
      link.textContent = "Log in again";
      label.append(link);
    }
    showLive();
  }

  async function poll() {
    clearTimeout(timer);
    if (!main || mode === "ended" || mode === "paused") return;
    if (polling) {
      again = true; // a form was just sent: look once more when this answer is in
      return;
    }
    polling = true;
    try {
      const response = await fetch(main.dataset.liveUrl, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401) {
        const here = location.pathname + location.search;
        ended("Not updating: your session ended.", main.dataset.loginUrl + "?next=" + encodeURIComponent(here));
        return;
      }
      if (response.status === 404) {
        const data = await response.json().catch(() => ({}));
        ended(data.message || "Not updating: this page is gone.", null);
        return;
      }
      if (!response.ok) throw new Error("status " + response.status);
      const data = await response.json();
      for (const [id, region] of Object.entries(data.regions || {})) apply(id, region);
      lastUpdate = Date.now();
      refreshes += 1;
      main.dataset.liveRefreshes = String(refreshes);
      if (mode === "stale") mode = "live";
    } catch (error) {
      if (mode === "live") mode = "stale"; // the server is restarting or the network is away
    } finally {
      polling = false;
      showLive();
      afterAction();
    }
    if (again) {
      again = false;
      poll();
    } else if (!document.hidden && (mode === "live" || mode === "stale")) {
      timer = setTimeout(poll, every);
    }
  }

  function startBar() {
    bar = document.createElement("p");
    bar.className = "live-bar";
    const text = document.createElement("span");
    text.className = "live-age";
    const button = document.createElement("button");
    button.type = "button";
    button.addEventListener("click", () => {
      if (mode === "paused") {
        mode = "live";
        poll();
      } else {
        mode = "paused";
        clearTimeout(timer);
      }
      showLive();
    });
    bar.append(text, button);
    const heading = main.querySelector("h1");
    if (heading) heading.after(bar);
    else main.prepend(bar);
    showLive();
  }

  // -- actions --------------------------------------------------------------------
  // Forms marked data-inline are sent in the background; the answer shows in the flash
  // area, and the focus returns to the same control if it is still there, else to the
  // message.
  let acted = null;

  function afterAction() {
    if (!acted) return;
    const button = document.querySelector("form[action='" + CSS.escape(acted) + "'] button[type=submit]");
    acted = null;
    if (button && !button.disabled) button.focus();
    else if (flash) flash.focus();
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.matches("form[data-inline]")) return;
    event.preventDefault();
    const action = form.getAttribute("action");
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => { button.disabled = true; });
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => ({ message: "The server answered " + response.status + "." }));
      say(data.message, response.ok ? "ok" : "error");
    } catch (error) {
      say("The server did not answer; try again.", "error");
    } finally {
      buttons.forEach((button) => { button.disabled = false; });
      acted = action;
      if (main && mode !== "ended") {
        if (mode === "paused") {
          mode = "live"; // the reader acted: show what it did
          showLive();
        }
        poll();
      } else {
        afterAction();
      }
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });

  // Phones: the filters fold behind their summary; wider screens keep them open.
  if (window.matchMedia("(max-width: 640px)").matches) {
    for (const box of document.querySelectorAll("details.filter-box")) box.open = false;
  }

  localize(document);
  if (main) {
    startBar();
    timer = setTimeout(poll, every);
  }
  setInterval(tick, 1000);
})();
