// A member's page: the segment and the word being played are highlighted; a click on either
// seeks there; ?t=SECONDS starts there (and ?play=1 plays, where the browser lets a page play).
"use strict";
(() => {
  const audio = document.getElementById("player");
  if (!audio) return;
  const segments = [...document.querySelectorAll(".seg")];
  const words = [...document.querySelectorAll(".w")];
  const starts = (list) => list.map((el) => parseFloat(el.dataset.start));
  const segmentStarts = starts(segments);
  const wordStarts = starts(words);
  let current = { seg: null, word: null };

  // The last item that started at or before t (the lists are in time order).
  function at(list, times, t) {
    let lo = 0, hi = times.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (times[mid] <= t) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found < 0 ? null : list[found];
  }

  function mark(kind, el) {
    if (current[kind] === el) return;
    if (current[kind]) current[kind].classList.remove("now");
    if (el) el.classList.add("now");
    current[kind] = el;
    if (kind === "seg" && el && !audio.paused) el.scrollIntoView({ block: "nearest" });
  }

  function tick() {
    const t = audio.currentTime;
    mark("seg", at(segments, segmentStarts, t));
    const word = at(words, wordStarts, t);
    mark("word", word);
    document.body.dataset.word = word ? word.dataset.start : "";
  }

  function follow() {
    tick();
    if (!audio.paused) requestAnimationFrame(follow);
  }

  audio.addEventListener("timeupdate", tick);
  audio.addEventListener("seeked", tick);
  audio.addEventListener("play", () => requestAnimationFrame(follow));

  document.getElementById("transcript").addEventListener("click", (event) => {
    const el = event.target.closest("[data-start]");
    if (!el) return;
    audio.currentTime = parseFloat(el.dataset.start);
    audio.play().catch(() => {});
  });

  const params = new URLSearchParams(location.search);
  const start = parseFloat(params.get("t"));
  function begin() {
    if (Number.isFinite(start) && start >= 0) audio.currentTime = start;
    document.body.dataset.begunAt = String(audio.currentTime);  // where it was put, before playing
    if (params.get("play") === "1") {
      audio.play().catch(() => {  // the browser wants a gesture on this page first
        document.body.dataset.autoplay = "refused";
        document.getElementById("press-play").hidden = false;
      });
    }
    tick();
  }
  if (audio.readyState >= 1) begin(); else audio.addEventListener("loadedmetadata", begin, { once: true });
})();
