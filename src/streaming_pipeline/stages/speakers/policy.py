"""Who spoke when, as pure functions: where to take embeddings, how to group them into speakers,
and how a transcript's segments and words get their speaker. No model, no threads, no settings:
a unit test calls each with numbers.

The speech regions come from the transcript, not from a voice-activity detector: the decoder's
words (else its segments) already follow speech, and raw VAD marks sung music and crowds as
speech and misses a band-limited caller. Inside those regions the audio is cut into windows of
1.5 s every 0.75 s (3D-Speaker's diarization recipe), each embedded by CAM++. The windows are
grouped by spectral clustering on their cosine affinities, with the speaker count read off the
Laplacian's largest eigengap (3D-Speaker's `SpectralCluster`); speakers whose centroids are
closer than a cosine of `MERGE_COS` are one, and a speaker with less than `MIN_SPEAKER_S` of
windows is given to its nearest neighbour. Many windows (a long member) are first reduced to
micro-clusters of neighbouring windows, so the cost and memory stay linear in the member's length.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ...transcript import Segment, Speaker, Turn, Word

WINDOW_S = 1.5
STEP_S = 0.75
MIN_WINDOW_S = 0.4  # a region shorter than this gets no window of its own (its neighbours label it)
REGION_GAP_S = 0.5  # words closer than this are one region (a shorter pause is inside speech)
REGION_PAD_S = 0.2  # a word's audio reaches past its timed edges (Whisper's are ~0.2 s off)
P_PRUNE = 0.022  # share of each affinity row kept (3D-Speaker's p-value)
MIN_PRUNE_KEEP = 6  # ... but at least this many neighbours
MERGE_COS = 0.7  # centroids this similar are one speaker
MIN_SPEAKER_S = 2.0  # of windows: less is a fragment of another speaker, not a speaker
MAX_DIRECT = 600  # windows clustered directly; more are micro-clustered first
MICRO_CLUSTERS = 300
FRAME_S = 0.01


@dataclass(frozen=True)
class Window:
    """A stretch of the member's audio that gets one embedding."""

    start: float
    end: float

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


# -- where the speech is, and its windows ---------------------------------------------------------
def spoken(text: str) -> bool:
    """Whether a segment's or word's text says anything: a letter or a digit (Whisper writes `.`
    or `...` over instrumental music, which is no one's speech)."""
    return any(c.isalnum() for c in text)


def speech_regions(segments: Sequence[Segment], duration: float) -> list[tuple[float, float]]:
    """The stretches of speech the transcript vouches for: its words (padded a little, nearby ones
    joined), or a segment's span where its words were not timed; never a segment that says
    nothing (`spoken`)."""
    spans: list[tuple[float, float]] = []
    for s in segments:
        if not spoken(s.text):
            continue
        if s.words:
            spans += [(w.start - REGION_PAD_S, w.end + REGION_PAD_S) for w in s.words if w.end > w.start]
        elif s.end > s.start:
            spans.append((s.start, s.end))
    spans = sorted((max(0.0, a), min(duration, b)) for a, b in spans)
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a - merged[-1][1] < REGION_GAP_S:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        elif b > a:
            merged.append((a, b))
    return merged


def windows(regions: Sequence[tuple[float, float]]) -> list[Window]:
    """1.5 s windows every 0.75 s inside each region; the last one ends at the region's end; a
    region shorter than a window is one window as long as the region."""
    out: list[Window] = []
    for a, b in regions:
        length = b - a
        if length < MIN_WINDOW_S:
            continue
        if length <= WINDOW_S:
            out.append(Window(a, b))
            continue
        starts = list(np.arange(a, b - WINDOW_S + 1e-9, STEP_S))
        if b - (starts[-1] + WINDOW_S) > 0.1 * WINDOW_S:
            starts.append(b - WINDOW_S)
        out += [Window(float(s), float(s) + WINDOW_S) for s in starts]
    return out


# -- grouping the windows into speakers -----------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _spectral(emb: np.ndarray, max_speakers: int, num_speakers: int | None) -> np.ndarray:
    """3D-Speaker's spectral clustering: pruned cosine affinity, unnormalised Laplacian, the
    count from the largest eigengap, k-means on the eigenvectors."""
    from scipy.linalg import eigh
    from sklearn.cluster import KMeans

    n = len(emb)
    sim = emb @ emb.T
    keep = max(MIN_PRUNE_KEEP, int(np.ceil(P_PRUNE * n)))
    if keep < n:
        low = np.argsort(sim, axis=1)[:, : n - keep]
        np.put_along_axis(sim, low, 0.0, axis=1)
    sim = 0.5 * (sim + sim.T)
    np.fill_diagonal(sim, 0.0)
    laplacian = np.diag(np.abs(sim).sum(1)) - sim
    values, vectors = eigh(laplacian)
    if num_speakers is not None:
        k = min(num_speakers, n)
    else:
        upper = min(max_speakers, n - 1)
        gaps = np.diff(values[: upper + 1])
        k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    if k <= 1:
        return np.zeros(n, dtype=int)
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(vectors[:, :k])


def _merge_close(
    emb: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_speakers: int | None
) -> np.ndarray:
    """Speakers whose centroids are closer than MERGE_COS joined, most similar first; then
    speakers with less than MIN_SPEAKER_S of windows given to their nearest speaker."""
    labels = labels.copy()

    def centroids() -> tuple[list[int], np.ndarray]:
        ids = sorted(set(labels.tolist()))
        return ids, _unit(np.stack([(emb[labels == i] * weights[labels == i, None]).sum(0) for i in ids]))

    while num_speakers is None:
        ids, c = centroids()
        if len(ids) < 2:
            break
        sim = c @ c.T
        np.fill_diagonal(sim, -1.0)
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] < MERGE_COS:
            break
        labels[labels == ids[j]] = ids[i]
    min_windows = MIN_SPEAKER_S / STEP_S
    while True:
        ids, c = centroids()
        sizes = np.array([weights[labels == i].sum() for i in ids])
        small = [k for k in np.argsort(sizes) if sizes[k] < min_windows]
        if len(ids) < 2 or not small or (num_speakers is not None and len(ids) <= num_speakers):
            break
        k = small[0]
        sim = c @ c[k]
        sim[k] = -2.0
        labels[labels == ids[k]] = ids[int(np.argmax(sim))]
    return labels


def cluster(embeddings: np.ndarray, *, max_speakers: int = 8, num_speakers: int | None = None) -> np.ndarray:
    """A speaker index for each window's embedding (0, 1, …; in no particular order)."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    emb = _unit(np.asarray(embeddings, dtype=np.float64))
    if n < 2 or num_speakers == 1:
        return np.zeros(n, dtype=int)
    if n <= MAX_DIRECT:
        labels = _spectral(emb, max_speakers, num_speakers)
        return _merge_close(emb, labels, np.ones(n), num_speakers)
    from sklearn.cluster import MiniBatchKMeans

    micro = MiniBatchKMeans(n_clusters=MICRO_CLUSTERS, n_init=3, random_state=0, batch_size=1024).fit(emb)
    counts = np.bincount(micro.labels_, minlength=MICRO_CLUSTERS).astype(float)
    used = counts > 0
    centres = _unit(micro.cluster_centers_[used])
    top = _spectral(centres, max_speakers, num_speakers)
    top = _merge_close(centres, top, counts[used], num_speakers)
    mapping = np.full(MICRO_CLUSTERS, -1)
    mapping[np.flatnonzero(used)] = top
    return mapping[micro.labels_]


# -- from labelled windows to turns and a transcript's speakers -----------------------------------
def turns(
    regions: Sequence[tuple[float, float]], wins: Sequence[Window], labels: Sequence[int] | np.ndarray
) -> list[Turn]:
    """Each 10 ms of speech takes the label of the window whose centre is nearest (windows overlap
    by half, so a change is placed within 0.375 s); runs of one label are turns, named `S1`, `S2`,
    … in order of first appearance. Regions without a window take their nearest window's label."""
    if not wins:
        return []
    centres = np.array([w.centre for w in wins])
    lab = np.asarray(labels)
    raw: list[tuple[float, float, int]] = []
    for a, b in regions:
        t = np.arange(a, b, FRAME_S) + FRAME_S / 2
        if len(t) == 0:
            continue
        nearest = _nearest(t, centres, lab)  # by bisection: time and memory linear in the member
        change = np.flatnonzero(np.diff(nearest)) + 1
        bounds = [0, *change.tolist(), len(t)]
        for i, j in itertools.pairwise(bounds):
            start = a if i == 0 else float(t[i] - FRAME_S / 2)
            end = b if j == len(t) else float(t[j] - FRAME_S / 2)
            raw.append((start, end, int(nearest[i])))
    names: dict[int, str] = {}
    out: list[Turn] = []
    for start, end, label in raw:
        name = names.setdefault(label, f"S{len(names) + 1}")
        if out and out[-1].speaker == name and start - out[-1].end < 1e-6:
            out[-1] = replace(out[-1], end=end)
        else:
            out.append(Turn(start, end, name))
    return out


def _nearest(t: np.ndarray, centres: np.ndarray, lab: np.ndarray) -> np.ndarray:
    order = np.argsort(centres)
    c = centres[order]
    i = np.clip(np.searchsorted(c, t), 1, len(c) - 1)
    left = np.where(np.abs(t - c[i - 1]) <= np.abs(t - c[i]), i - 1, i)
    return lab[order][left]


class _Turns:
    """A member's turns (in time order, none overlapping) for looking up a stretch's speaker by
    bisection, so that attributing every word of a long member stays linear in its length."""

    def __init__(self, turn_list: Sequence[Turn]) -> None:
        self.turns = sorted(turn_list, key=lambda t: t.start)
        self.ends = [t.end for t in self.turns]

    def speaker_at(self, start: float, end: float) -> str | None:
        """The speaker with the most time in [start, end]; the nearest turn's when none overlaps."""
        if not self.turns:
            return None
        i = bisect.bisect_right(self.ends, start)
        best: dict[str, float] = {}
        for t in itertools.islice(self.turns, i, None):
            if t.start >= end:
                break
            overlap = min(end, t.end) - max(start, t.start)
            if overlap > 0:
                best[t.speaker] = best.get(t.speaker, 0.0) + overlap
        if best:
            return max(best, key=lambda k: best[k])
        mid = (start + end) / 2
        near = self.turns[max(0, i - 1) : i + 1]
        return min(near, key=lambda t: min(abs(mid - t.start), abs(mid - t.end))).speaker


def attribute(segments: Sequence[Segment], turn_list: Sequence[Turn]) -> list[Segment]:
    """The segments with their speakers: each word takes the speaker it overlaps most, a segment
    whose words change speaker is split there (its text is its words' text), a segment without
    timed words takes the speaker of most of its span; a segment that says nothing has none."""
    out: list[Segment] = []
    index = _Turns(turn_list)
    for seg in segments:
        if not turn_list or not spoken(seg.text):
            out.append(seg)
            continue
        if not seg.words:
            out.append(replace(seg, speaker=index.speaker_at(seg.start, seg.end)))
            continue
        words = [replace(w, speaker=index.speaker_at(w.start, w.end)) for w in seg.words]
        runs: list[list[Word]] = []
        for w in words:
            if runs and runs[-1][-1].speaker == w.speaker:
                runs[-1].append(w)
            else:
                runs.append([w])
        if len(runs) == 1:
            out.append(replace(seg, words=words, speaker=words[0].speaker))
            continue
        for i, run in enumerate(runs):
            start = seg.start if i == 0 else run[0].start
            end = seg.end if i == len(runs) - 1 else run[-1].end
            text = "".join(w.word for w in run).strip()
            out.append(replace(seg, start=start, end=end, text=text, words=run, speaker=run[0].speaker))
    return out


def summaries(
    turn_list: Sequence[Turn],
    wins: Sequence[Window],
    labels: Sequence[int] | np.ndarray,
    embeddings: np.ndarray,
) -> list[Speaker]:
    """Each named speaker's seconds, first appearance and centroid (the mean of its windows'
    unit embeddings, made unit length)."""
    if not turn_list:
        return []
    emb = _unit(np.asarray(embeddings, dtype=np.float64))
    by_name: dict[str, list[int]] = {}
    lab = np.asarray(labels)
    centres = np.array([w.centre for w in wins])
    order = np.argsort(centres)
    for t in turn_list:
        first = int(np.searchsorted(centres[order], t.start, side="left"))
        last = int(np.searchsorted(centres[order], t.end, side="right"))
        by_name.setdefault(t.speaker, []).extend(int(lab[i]) for i in order[first:last])
    out = []
    for name in dict.fromkeys(t.speaker for t in turn_list):
        mine = [t for t in turn_list if t.speaker == name]
        idx = by_name.get(name) or []
        label = max(set(idx), key=idx.count) if idx else None
        vec = _unit(emb[lab == label].mean(0)) if label is not None else np.zeros(emb.shape[1])
        out.append(
            Speaker(name, sum(t.end - t.start for t in mine), mine[0].start, tuple(float(v) for v in vec))
        )
    return out


# -- the same voice across a day's members ------------------------------------------------------
VOICE_COS = MERGE_COS  # member-speakers this similar (average linkage) are one voice
MAX_VOICES_DIRECT = 2000


def voices(centroids: np.ndarray) -> list[str]:
    """A voice for each member-speaker's centroid (in the order given: the day's slots, members,
    first appearances): agglomerative clustering with average linkage, cut where the average
    cosine between two groups falls below `VOICE_COS`, the similarity that joins two speakers
    within a member; voices named `V1`, `V2`, ... in order of first appearance. A day of more
    than `MAX_VOICES_DIRECT` member-speakers is first reduced to as many micro-clusters, so the
    linkage's memory stays bounded however long the day."""
    n = len(centroids)
    if n == 0:
        return []
    emb = _unit(np.asarray(centroids, dtype=np.float64))
    if n == 1:
        labels = np.zeros(1, dtype=int)
    elif n <= MAX_VOICES_DIRECT:
        labels = _average_linkage(emb)
    else:
        from sklearn.cluster import MiniBatchKMeans

        micro = MiniBatchKMeans(n_clusters=MAX_VOICES_DIRECT, n_init=3, random_state=0, batch_size=4096).fit(
            emb
        )
        used = np.flatnonzero(np.bincount(micro.labels_, minlength=MAX_VOICES_DIRECT) > 0)
        top = np.full(MAX_VOICES_DIRECT, -1)
        top[used] = _average_linkage(_unit(micro.cluster_centers_[used]))
        labels = top[micro.labels_]
    names: dict[int, str] = {}
    return [names.setdefault(int(label), f"V{len(names) + 1}") for label in labels]


def _average_linkage(emb: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(emb, method="average", metric="cosine")
    return np.asarray(fcluster(tree, t=1.0 - VOICE_COS, criterion="distance"))


def rttm(stem: str, turn_list: Sequence[Turn]) -> str:
    """Standard RTTM lines for a member's turns (`stem`'s blanks as `_`: RTTM fields are
    separated by blanks)."""
    stem = re.sub(r"\s+", "_", stem) or "member"
    return "".join(
        f"SPEAKER {stem} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in turn_list
    )


__all__ = [
    "Window",
    "attribute",
    "cluster",
    "rttm",
    "speech_regions",
    "summaries",
    "turns",
    "voices",
    "windows",
]
