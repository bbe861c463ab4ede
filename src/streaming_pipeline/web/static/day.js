// A day's page while its workers run: its rows from /api/days/DAY every 2 s, written as text.
"use strict";
(() => {
  const body = document.body;
  const day = body.dataset.day;
  const stateColumn = Number(body.dataset.stateColumn);
  const rows = document.querySelector("#archives tbody");
  const totals = document.getElementById("totals");
  const updated = document.getElementById("updated");
  let polls = 0;

  function draw(data) {
    const fresh = document.createDocumentFragment();
    for (const cells of data.archives) {
      const tr = document.createElement("tr");
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.className = "c" + i + (i === stateColumn ? " state " + text.replace("?", "-lost") : "");
        td.textContent = text;
        tr.appendChild(td);
      });
      fresh.appendChild(tr);
    }
    rows.replaceChildren(fresh);
    totals.textContent = data.totals;
    updated.textContent = new Date().toLocaleTimeString();
    body.dataset.polls = String(++polls);
    body.dataset.complete = String(data.complete);
  }

  async function poll() {
    try {
      const answer = await fetch("/api/days/" + encodeURIComponent(day), { cache: "no-store" });
      if (answer.ok) draw(await answer.json());
    } catch (e) {
      updated.textContent = "not reachable: " + e;
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
