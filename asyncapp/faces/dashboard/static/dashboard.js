// asyncapp dashboard: local times, live regions, and forms sent without leaving the page.
// Every page works without this script; it only adds to them.
"use strict";

(function () {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const localFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });

  // <time datetime="..."> shows UTC from the server; add the browser's local time below it.
  function localize(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      if (el.querySelector(".local")) continue;
      const moment = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(moment.getTime())) continue;
      const local = document.createElement("span");
      local.className = "local";
      local.textContent = localFormat.format(moment) + " (" + zone + ")";
      el.append(local);
    }
  }

  const flash = document.getElementById("flash");
  function say(text, kind) {
    if (!flash) return;
    const p = document.createElement("p");
    p.className = "msg msg-" + kind;
    p.textContent = text;
    flash.replaceChildren(p);
  }

  // Live regions: ask the page's URL with ?live=1 and swap in the regions whose hash changed.
  const main = document.querySelector("main[data-live-url]");
  const every = main ? Number(main.dataset.liveEvery) || 2000 : 0;
  let timer = null;
  let stopped = false;
  let polling = false;
  let again = false;

  function swap(el, html, hash) {
    const active = document.activeElement;
    const refocus = active && el.contains(active) ? active.id || active.getAttribute("name") : null;
    el.innerHTML = html;
    el.dataset.liveHash = hash;
    localize(el);
    if (refocus) {
      const again = el.querySelector("#" + CSS.escape(refocus) + ", [name='" + CSS.escape(refocus) + "']");
      (again || flash).focus();
    }
  }

  async function poll() {
    clearTimeout(timer);
    if (!main || stopped) return;
    if (polling) {
      again = true; // a form was just sent: look once more when this answer is in
      return;
    }
    polling = true;
    try {
      const response = await fetch(main.dataset.liveUrl, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401 || response.status === 404) {
        stopped = true;
        const data = await response.json().catch(() => ({}));
        say(data.message || "This page is gone; reload it.", "error");
        return;
      }
      if (response.ok) {
        const data = await response.json();
        for (const [id, region] of Object.entries(data.regions || {})) {
          const el = document.getElementById(id);
          if (el && el.dataset.liveHash !== region.hash) swap(el, region.html, region.hash);
        }
      }
    } catch (error) {
      // The server is restarting or the network is away: try again at the next tick.
    } finally {
      polling = false;
    }
    if (again) {
      again = false;
      poll();
    } else if (!document.hidden && !stopped) {
      timer = setTimeout(poll, every);
    }
  }

  // Forms marked data-inline are sent in the background; the answer shows in the flash area.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.matches("form[data-inline]")) return;
    event.preventDefault();
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
      poll();
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });

  localize(document);
  if (main) timer = setTimeout(poll, every);
})();
