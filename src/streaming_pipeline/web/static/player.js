// A member's page: the segment and the word being played are highlighted (and followed, unless
// the reader turns that off); a click on either seeks there. The server has read ?t= (any of
// 90, 1:30, 1m30s, 1:02:03) into data-start-at and said on the page when it could not; ?play=1
// plays where the browser lets a page play. With ?q= the hits are marked: n/p and the buttons
// go from one to the next, each brought to the middle of the screen. Keys: space plays and
// pauses, arrows seek 5 s (with shift 30 s). "Copy link at this moment" writes the page's
// address with ?t= of the second being played. The player sticks below the header and nothing
// is scrolled under the two.
"use strict";
(() => {
  const audio = document.getElementById("player");
  if (!audio) return;
  const body = document.body;
  const segments = [...document.querySelectorAll(".seg")];
  const words = [...document.querySelectorAll(".w")];
  const hits = [...document.querySelectorAll(".seg.hit")];
  const follow = document.getElementById("follow");
  const starts = (list) => list.map((el) => parseFloat(el.dataset.start));
  const segmentStarts = starts(segments);
  const wordStarts = starts(words);
  let current = { seg: null, word: null };
  let hitIndex = -1;

  // The player sticks under the header, whose height depends on how it wraps (on a phone the
  // header scrolls away and the player sticks at the top); what scrolls into view stops below
  // them (scroll-padding), never under them.
  const header = document.querySelector("header");
  function placePlayer() {
    const sticky = header && getComputedStyle(header).position === "sticky";
    const top = sticky ? header.getBoundingClientRect().height : 0;
    audio.style.top = top + "px";
    document.documentElement.style.scrollPaddingTop = top + audio.getBoundingClientRect().height + 8 + "px";
  }
  placePlayer();
  window.addEventListener("resize", placePlayer);

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
    if (kind === "seg" && el && !audio.paused && follow.checked) el.scrollIntoView({ block: "nearest" });
  }

  function tick() {
    const t = audio.currentTime;
    mark("seg", at(segments, segmentStarts, t));
    const word = at(words, wordStarts, t);
    mark("word", word);
    body.dataset.word = word ? word.dataset.start : "";
  }

  function loop() {
    tick();
    if (!audio.paused) requestAnimationFrame(loop);
  }

  audio.addEventListener("timeupdate", tick);
  audio.addEventListener("seeked", tick);
  audio.addEventListener("play", () => requestAnimationFrame(loop));

  document.getElementById("transcript").addEventListener("click", (event) => {
    if (event.target.closest("a")) return;  // a segment's own link is followed, not played
    const el = event.target.closest("[data-start]");
    if (!el) return;
    audio.currentTime = parseFloat(el.dataset.start);
    audio.play().catch(() => {});
  });

  // -- hits -----------------------------------------------------------------------------------
  function showHit(i) {
    if (!hits.length) return;
    hitIndex = (i + hits.length) % hits.length;
    hits.forEach((h) => h.classList.remove("chosen"));
    const hit = hits[hitIndex];
    hit.classList.add("chosen");
    hit.scrollIntoView({ block: "center" });
    body.dataset.hit = String(hitIndex);
    const count = document.getElementById("hit-count");
    if (count) count.textContent = `hit ${hitIndex + 1} of ${hits.length}`;
  }
  const next = document.getElementById("next-hit");
  const prev = document.getElementById("prev-hit");
  if (next) next.addEventListener("click", () => showHit(hitIndex + 1));
  if (prev) prev.addEventListener("click", () => showHit(hitIndex - 1));

  // -- a link to this moment ------------------------------------------------------------------
  function momentLink() {
    const url = new URL(location.href);
    url.search = "";
    url.hash = "";
    url.searchParams.set("t", String(Math.floor(audio.currentTime)));
    return url.toString();
  }
  document.getElementById("copy-link").addEventListener("click", async () => {
    const link = momentLink();
    const said = document.getElementById("copied");
    body.dataset.copied = link;
    try {
      await navigator.clipboard.writeText(link);
      said.textContent = "Copied: " + link;
    } catch (e) {
      said.textContent = "Copy this link: " + link;  // no clipboard here: the link is shown
    }
  });

  // -- keys -----------------------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest("input, select, textarea, button, a, audio");
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === " " && !typing) {
      event.preventDefault();
      if (audio.paused) audio.play().catch(() => {}); else audio.pause();
    } else if ((event.key === "ArrowLeft" || event.key === "ArrowRight") && !event.target.closest("input, select, textarea, audio")) {
      event.preventDefault();
      const step = (event.shiftKey ? 30 : 5) * (event.key === "ArrowLeft" ? -1 : 1);
      audio.currentTime = Math.max(0, Math.min(audio.duration || Infinity, audio.currentTime + step));
    } else if ((event.key === "n" || event.key === "p") && !event.target.closest("input, select, textarea")) {
      showHit(hitIndex + (event.key === "n" ? 1 : -1));
    }
  });

  // -- where it starts ------------------------------------------------------------------------
  const start = parseFloat(audio.dataset.startAt || "0");
  function begin() {
    if (Number.isFinite(start) && start > 0) audio.currentTime = start;
    body.dataset.begunAt = String(audio.currentTime);  // where it was put, before playing
    if (audio.dataset.play === "true") {
      audio.play().catch(() => {  // the browser wants a gesture on this page first
        body.dataset.autoplay = "refused";
        document.getElementById("press-play").hidden = false;
      });
    }
    tick();
  }
  if (hits.length) {
    // the hit the link was made for (the one at ?t=, a second after it) or the first
    const near = hits.findIndex((h) => Math.abs(parseFloat(h.dataset.start) - start) <= 1.5);
    showHit(near >= 0 ? near : 0);
  }
  if (audio.readyState >= 1) begin(); else audio.addEventListener("loadedmetadata", begin, { once: true });
})();
