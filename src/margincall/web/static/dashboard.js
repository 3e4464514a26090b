// Live updates by server-sent events: each `update` replaces the page's #live fragment,
// each `health` the banner; countdowns tick every second against the chain's clock.
(function () {
  "use strict";
  const topic = document.body.dataset.topic;
  const health = document.getElementById("health");
  let offset = 0; // chain time - local time, from the last fragment

  function syncClock() {
    const t = document.querySelector("[data-now]");
    if (t) offset = Number(t.dataset.now) - Date.now() / 1000;
  }

  function tick() {
    const now = Date.now() / 1000 + offset;
    for (const el of document.querySelectorAll(".countdown[data-deadline]")) {
      const deadline = Number(el.dataset.deadline);
      if (!deadline) continue;
      const left = Math.max(0, Math.round(deadline - now));
      const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      el.textContent = (h ? h + "h" : "") + String(m).padStart(h ? 2 : 1, "0") + "m" +
        String(s).padStart(2, "0") + "s left";
    }
  }

  syncClock();
  setInterval(tick, 1000);
  if (!topic) return;
  const [kind, account] = topic.split(":");
  const url = "/events/" + kind + (account ? "?account=" + account : "");
  const source = new EventSource(url);
  source.addEventListener("update", (e) => {
    const live = document.getElementById("live");
    if (live) live.innerHTML = e.data;
    syncClock();
    tick();
    document.dispatchEvent(new CustomEvent("margincall:update"));
  });
  source.addEventListener("health", (e) => {
    health.textContent = e.data;
    health.className = "health " + (e.data.startsWith("live") ? "ok" : "bad");
  });
  source.onerror = () => {
    health.textContent = "lost the dashboard server; reconnecting…";
    health.className = "health bad";
  };
})();
