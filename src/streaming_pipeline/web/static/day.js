// A day's page while its workers run: its rows from /api/days/DAY every 2 s, written as text;
// the slot of each row links to the slot's members. Once every archive is final (done, failed,
// damaged) nothing will change without someone acting, so the page stops asking and says so.
"use strict";
(() => {
  const body = document.body;
  const day = body.dataset.day;
  const stateColumn = Number(body.dataset.stateColumn);
  const rows = document.querySelector("#archives tbody");
  const totals = document.getElementById("totals");
  const following = document.getElementById("following");
  let polls = 0;

  function draw(data) {
    const fresh = document.createDocumentFragment();
    for (const cells of data.archives) {
      const tr = document.createElement("tr");
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.className = "c" + i + (i === stateColumn ? " state " + text.replace("?", "-lost") : "");
        if (i === 0) {
          const a = document.createElement("a");
          a.href = "/days/" + encodeURIComponent(day) + "/slots/" + encodeURIComponent(text);
          a.textContent = text;
          td.appendChild(a);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      fresh.appendChild(tr);
    }
    rows.replaceChildren(fresh);
    totals.textContent = data.totals;
    body.dataset.polls = String(++polls);
    body.dataset.complete = String(data.complete);
    body.dataset.settled = String(data.settled);
    following.textContent = data.settled
      ? "Every archive of the day is final: this page no longer updates."
      : "Updated " + new Date().toLocaleTimeString() + "; the page follows the day while its workers run.";
  }

  async function poll() {
    try {
      const answer = await fetch("/api/days/" + encodeURIComponent(day), { cache: "no-store" });
      if (answer.ok) {
        const data = await answer.json();
        draw(data);
        if (data.settled) return;  // final: no more requests
      }
    } catch (e) {
      following.textContent = "The server is not reachable now (" + e + "); trying again.";
    }
    setTimeout(poll, 2000);
  }
  if (body.dataset.settled !== "true") setTimeout(poll, 2000);
})();
