// The day report's charts and tables, drawn from the JSON embedded in the page (report.py).
(function () {
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const colours = {extract: "#8c6bb1", convert: "#41ab5d", transcribe: "#2171b5", upload: "#fd8d3c"};
  const cfg = {displaylogo: false, responsive: true};
  let drawn = 0;
  function plot(id, data, layout) {
    Plotly.newPlot(id, data, Object.assign({margin: {t: 30, l: 60, r: 20, b: 50}}, layout), cfg);
    drawn += 1;
  }
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

  const rows = D.timeline.rows;
  plot("timeline", Object.entries(D.timeline.bars).map(([stage, bars]) => ({
    type: "bar", orientation: "h", name: stage, marker: {color: colours[stage]}, offsetgroup: stage,
    y: bars.map(b => b[0]), base: bars.map(b => b[1]), x: bars.map(b => b[2]),
    hovertemplate: stage + " %{base|%H:%M:%S} +%{x:.0f} ms<extra>%{y}</extra>"})),
    {barmode: "group", height: Math.max(260, 40 + 26 * rows.length), xaxis: {type: "date"},
     yaxis: {categoryorder: "array", categoryarray: rows.slice().reverse(), automargin: true}});

  const T = D.throughput;
  plot("throughput", [
    {type: "scatter", mode: "lines", name: "audio s per s", x: T.t, y: T.audio_per_s},
    {type: "scatter", mode: "lines", name: "members per minute", x: T.t, y: T.members_per_min, yaxis: "y2"},
    {type: "scatter", mode: "lines", name: "workers running", x: T.t, y: T.workers, yaxis: "y3", line: {dash: "dot"}}],
    {xaxis: {type: "date", domain: [0, 0.85]}, yaxis: {title: {text: "audio s / s"}},
     yaxis2: {overlaying: "y", side: "right", title: {text: "members / min"}},
     yaxis3: {overlaying: "y", side: "right", position: 0.95, anchor: "free", title: {text: "workers"}}});

  const A = D.per_archive;
  plot("xrt", [{type: "bar", x: A.map(a => a.slot), y: A.map(a => a.xrt), name: "x realtime",
    marker: {color: A.map(a => a.state === "done" ? "#2171b5" : a.state === "failed" ? "#cb181d" : "#fd8d3c")}}],
    {yaxis: {title: {text: "audio s / wall s"}}});
  plot("stages", ["extract", "convert", "transcribe", "upload"].map(stage => ({type: "bar", name: stage,
    marker: {color: colours[stage]}, x: A.map(a => a.slot), y: A.map(a => a.stages[stage])})),
    {barmode: "stack", yaxis: {title: {text: "stage seconds (busy)"}}});
  table("slowest", ["archive", "state", "elapsed s", "x realtime", "worker"],
    D.slowest.map(a => [a.archive, a.state, Number(fmt(a.elapsed_s, 1)), Number(fmt(a.xrt, 2)), a.owner]));
  table("held", ["archive", "state", "held by", "lease until"],
    D.held.map(a => [a.archive, a.state, a.owner, a.lease_until]));
  document.getElementById("held-note").textContent = D.held.length
    ? D.held.length + " archives held by a worker when the report was written"
    : "no archive held by a worker when the report was written";

  const G = Object.entries(D.gpu);
  if (G.length) {
    plot("gpu", G.flatMap(([host, s]) => [
      {type: "scatter", mode: "lines", name: host + " busy %", x: s.t, y: s.busy},
      {type: "scatter", mode: "lines", name: host + " memory MB", x: s.t, y: s.memory_mb, yaxis: "y2", line: {dash: "dot"}}]),
      {xaxis: {type: "date"}, yaxis: {title: {text: "busy %"}, range: [0, 100]},
       yaxis2: {overlaying: "y", side: "right", title: {text: "MB"}}});
  } else {
    document.getElementById("gpu").replaceWith(el("p", "No GPU samples were recorded (CPU workers, or no NVML).", "note"));
  }

  const R = D.reasons;
  plot("reasons", [{type: "bar", orientation: "h", x: R.map(r => r.n), y: R.map(r => { const t = r.status + ": " + r.reason; return t.length > 90 ? t.slice(0, 87) + "..." : t; }),
    hovertext: R.map(r => r.status + ": " + r.reason), hoverinfo: "text+x",
    marker: {color: R.map(r => r.status === "failed" ? "#cb181d" : "#fd8d3c")}}],
    {height: Math.max(200, 60 + 24 * R.length), yaxis: {automargin: true, autorange: "reversed"}});
  table("failures", ["archive", "member", "status", "reason"], D.failures.map(f => [f.archive, f.member, f.status, f.error]));
  const more = D.failures_total - D.failures.length;
  document.getElementById("failures-more").textContent = more > 0 ? "... and " + more + " more" : D.failures_total + " in all";

  const Q = D.quality;
  card("quality", "empty transcripts", fmt(100 * Q.empty_share, 1) + " %");
  card("quality", "members that needed a fallback temperature", fmt(100 * Q.fallback_share, 1) + " %");
  card("quality", "members with timed segments", fmt(100 * Q.timed_share, 1) + " %");
  card("quality", "members with word times", fmt(100 * Q.word_share, 1) + " %");
  card("quality", "members with subtitles", fmt(100 * Q.subtitled_share, 1) + " %");
  plot("languages", [{type: "bar", x: Q.languages.map(l => l.language), y: Q.languages.map(l => l.n)}],
    {yaxis: {title: {text: "members"}}, title: {text: "languages"}});
  plot("durations", [{type: "bar", x: Q.durations.map(d => (d.from + d.to) / 2), y: Q.durations.map(d => d.n),
    width: Q.durations.map(d => d.to - d.from)}],
    {xaxis: {title: {text: "member duration, s"}}, yaxis: {title: {text: "members"}}, title: {text: "durations"}});
  table("models", ["model", "settings", "members", "audio hours"],
    Q.models.map(m => [m.model, m.settings, m.members, fmt(m.hours, 3)]));
  table("runs", ["run", "host", "job", "state", "started", "finished", "error"],
    D.runs.map(r => [r.label, r.host, r.job, r.state, r.started, r.finished, r.error]));

  document.body.dataset.charts = String(drawn);
  document.body.dataset.renderMs = String(Math.round(performance.now()));
  document.body.dataset.scriptMs = String(Math.round(performance.now() - t0));
  document.body.dataset.errors = JSON.stringify(window.__errors);
})();
