// The day report's cards and tables, filled from the JSON embedded in the page (report.py draws
// the charts as SVG).
(function () {
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById("report-data").textContent);
  function el(tag, text, cls) { const e = document.createElement(tag); e.textContent = text; if (cls) e.className = cls; return e; }
  function table(id, head, rows) {
    const t = document.getElementById(id); const tr = document.createElement("tr");
    head.forEach(h => tr.appendChild(el("th", h))); t.appendChild(tr);
    rows.forEach(r => { const row = document.createElement("tr");
      r.forEach(c => row.appendChild(el("td", c === null || c === undefined ? "" : String(c), typeof c === "number" ? "n" : ""))); t.appendChild(row); });
  }
  function card(id, label, value) { const c = el("div", "", "card"); c.appendChild(el("b", value)); c.appendChild(el("span", label)); document.getElementById(id).appendChild(c); }
  const fmt = (x, d) => Number(x).toFixed(d);
  document.getElementById("generated").textContent = "generated " + D.generated + "; " + D.summary.runs + " worker runs";
  const S = D.summary;
  card("summary", "archives done / failed / damaged / interrupted", S.archives_done + " / " + S.archives_failed + " / " + S.archives_damaged + " / " + S.archives_interrupted);
  card("summary", "members done", String(S.members_done));
  card("summary", "failed / rejected", S.members_failed + " / " + S.members_rejected);
  card("summary", "audio hours", fmt(S.audio_hours, 3));
  card("summary", "wall hours", fmt(S.wall_hours, 3));
  card("summary", "x realtime", fmt(S.xrt, 1));
  card("summary", "GPU hours", fmt(S.gpu_hours, 2));

  table("slowest", ["archive", "state", "elapsed s", "x realtime", "worker"],
    D.slowest.map(a => [a.archive, a.state, Number(fmt(a.elapsed_s, 1)), Number(fmt(a.xrt, 2)), a.owner]));
  table("held", ["archive", "state", "held by", "lease until"],
    D.held.map(a => [a.archive, a.state, a.owner, a.lease_until]));
  document.getElementById("held-note").textContent = D.held.length
    ? D.held.length + " archives held by a worker when the report was written"
    : "no archive held by a worker when the report was written";

  table("failures", ["archive", "member", "status", "reason"], D.failures.map(f => [f.archive, f.member, f.status, f.error]));
  const more = D.failures_total - D.failures.length;
  document.getElementById("failures-more").textContent = more > 0 ? "... and " + more + " more" : D.failures_total + " in all";

  const Q = D.quality;
  card("quality", "empty transcripts", fmt(100 * Q.empty_share, 1) + " %");
  card("quality", "members that needed a fallback temperature", fmt(100 * Q.fallback_share, 1) + " %");
  card("quality", "members with timed segments", fmt(100 * Q.timed_share, 1) + " %");
  card("quality", "members with word times", fmt(100 * Q.word_share, 1) + " %");
  card("quality", "members with subtitles", fmt(100 * Q.subtitled_share, 1) + " %");
  table("models", ["model", "settings", "members", "audio hours"],
    Q.models.map(m => [m.model, m.settings, m.members, fmt(m.hours, 3)]));
  table("runs", ["run", "host", "job", "state", "started", "finished", "error"],
    D.runs.map(r => [r.label, r.host, r.job, r.state, r.started, r.finished, r.error]));

  document.body.dataset.charts = String(document.querySelectorAll("figure.chart svg").length);
  document.body.dataset.renderMs = String(Math.round(performance.now()));
  document.body.dataset.scriptMs = String(Math.round(performance.now() - t0));
  document.body.dataset.errors = JSON.stringify(window.__errors);
})();
