import numpy as np
import pytest

from speechkd.packing import WINDOW_SECONDS, assign_tokens, pack_windows, split_long

SR = 16000


def test_pack_windows_fits_and_is_deterministic():
    lengths = [3 * SR, 5 * SR, 2 * SR, 10 * SR, 25 * SR, 4 * SR, 1 * SR]
    keys = [f"u{i}" for i in range(len(lengths))]
    a = pack_windows(lengths, keys, sample_rate=SR, gap_seconds=1.0)
    b = pack_windows(lengths[::-1], keys[::-1], sample_rate=SR, gap_seconds=1.0)
    flat = lambda ws, ks: sorted(tuple(ks[p.utt] for p in w.pieces) for w in ws)  # noqa: E731
    assert flat(a, keys) == flat(b, keys[::-1])
    assert sorted(p.utt for w in a for p in w.pieces) == list(range(len(lengths)))
    for w in a:
        assert w.length <= WINDOW_SECONDS * SR
        offsets = [p.offset for p in w.pieces]
        assert offsets == sorted(offsets)
    assert len(a) < len(lengths)  # something was packed


def test_pack_disabled_and_too_long():
    ws = pack_windows([SR, 2 * SR], ["a", "b"], sample_rate=SR, pack=False)
    assert all(not w.packed for w in ws)
    with pytest.raises(ValueError, match="longer than"):
        pack_windows([31 * SR], ["x"], sample_rate=SR)


def test_window_assemble_places_audio_with_gaps():
    ws = pack_windows([SR, SR], ["a", "b"], sample_rate=SR, gap_seconds=0.5)
    (w,) = ws
    audio = w.assemble({0: np.ones(SR, np.float32), 1: 2 * np.ones(SR, np.float32)})
    assert len(audio) == int(2.5 * SR)
    assert audio[: SR].min() == 1 and audio[SR : int(1.5 * SR)].max() == 0 and audio[-1] == 2
    assert w.spans_seconds(SR) == [(0.0, 1.0), (1.5, 2.5)]


def test_split_long_cuts_in_silence_and_covers_everything():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 70 * SR).astype(np.float32)
    audio[int(24 * SR) : int(24.5 * SR)] = 0  # a pause inside the first cut range
    chunks = split_long(audio, 0, sample_rate=SR)
    assert 24 * SR < chunks[0].pieces[0].end < 24.5 * SR  # the cut lands inside the pause
    assert sum(c.pieces[0].length for c in chunks) == len(audio)
    assert all(c.length <= WINDOW_SECONDS * SR for c in chunks)
    assert chunks[0].pieces[0].end == chunks[1].pieces[0].start


def test_assign_tokens_groups_words_and_flags_trouble():
    spans = [(0.0, 3.0), (4.0, 6.0)]
    starts = [0.1, 1.2, 2.3, 2.6, 4.2, 5.0]
    words = [True, True, True, False, True, True]  # the fourth token is punctuation glued to the word before
    a, bad = assign_tokens(starts, words, spans)
    assert a == [0, 0, 0, 0, 1, 1] and not bad
    a, bad = assign_tokens([0.1, 4.5, 1.0], [True, True, True], spans)  # out of order
    assert bad == {0, 1}
    a, bad = assign_tokens([0.1, 3.5], [True, True], spans)  # a word in the middle of the gap
    assert bad


def test_a_skipped_clip_flags_itself_and_its_neighbours():
    # Whisper skipped most of piece 1 and DTW gave it one stray word: re-decode it and both neighbours.
    spans = [(0.0, 3.0), (4.0, 7.0), (8.0, 11.0)]
    starts = [0.2, 0.9, 1.7, 2.5, 6.8, 8.2, 9.0, 9.8, 10.6]
    a, bad = assign_tokens(starts, [True] * len(starts), spans)
    assert a == [0, 0, 0, 0, 1, 2, 2, 2, 2] and bad == {0, 1, 2}


def test_dtw_matches_brute_force_and_finds_the_diagonal():
    from speechkd.decoding import _dtw_starts

    def brute(cost):  # the textbook double loop, same move order (diagonal, up, left) for ties
        n, m = cost.shape
        acc = np.full((n + 1, m + 1), np.inf)
        acc[0, 0] = 0
        trace = np.zeros((n + 1, m + 1), dtype=int)
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                choices = [acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]
                trace[i, j] = int(np.argmin(choices))
                acc[i, j] = cost[i - 1, j - 1] + choices[trace[i, j]]
        i, j, starts = n, m, [m] * n
        while i > 0 and j > 0:
            starts[i - 1] = min(starts[i - 1], j - 1)
            i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[trace[i, j]]
        return starts

    rng = np.random.default_rng(0)
    for shape in [(7, 23), (1, 5), (12, 12), (30, 200)]:
        cost = rng.random(shape)
        assert _dtw_starts(cost) == brute(cost)
    planted = np.ones((4, 12))
    for t, j in enumerate([0, 3, 6, 9]):
        planted[t, j : j + 3] = 0
    assert _dtw_starts(planted) == [0, 3, 6, 9]
