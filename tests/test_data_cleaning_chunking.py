"""Cleaning rules and chunking windows (pure functions)."""

import pytest

from dswb.engine.data.corpus.chunking import chunk_spans, chunk_tokens
from dswb.engine.data.corpus.cleaning import clean_batch, make_cleaner


# -- cleaning --------------------------------------------------------------------------------

def test_default_cleaner_removes_html_urls_and_symbols():
    clean = make_cleaner()
    text = '<p class="x">Hello, <b>world</b>!</p> See https://ex.com/a?b=1 or www.site.org. Price: 5$ \U0001F600 ok'
    assert clean(text) == "Hello, world ! See or Price: 5 ok"


def test_keeps_words_punctuation_non_latin_and_bare_angle_brackets():
    clean = make_cleaner(strip_special=False)
    assert clean("a < b and c > d") == "a < b and c > d"
    assert make_cleaner()("深度求索, «bonjour» — l'été; done.") == "深度求索, «bonjour» — l'été; done."
    assert clean("the httpd server") == "the httpd server"


def test_html_comments_and_multiline_tags():
    assert make_cleaner()('a<!-- hidden\ncomment -->b<img\n src="x.png"/>c') == "a b c"


def test_flags_switch_rules_off():
    text = "<i>x</i> http://u.rl y+z"
    assert make_cleaner(False, False, False)(text) == text
    assert make_cleaner(strip_html=False)(text) == "i x /i y z"  # < > / are symbols or punctuation
    assert make_cleaner(strip_urls=False, strip_special=False)(text) == "x http://u.rl y+z"


def test_whitespace_is_normalised_but_paragraphs_survive():
    clean = make_cleaner()
    assert clean("  a \t b  \r\n\r\n\r\n\n c  \n d ") == "a b\n\nc\nd"


def test_clean_batch_keeps_positions():
    assert clean_batch(["<b></b>", "x"], make_cleaner()) == ["", "x"]


# -- chunking --------------------------------------------------------------------------------

def test_short_document_kept_whole_even_below_min_chunk():
    assert chunk_tokens(list(range(10)), 512, 50, 256) == [list(range(10))]
    assert chunk_tokens(list(range(512)), 512, 50, 256) == [list(range(512))]
    assert chunk_tokens([], 512, 50, 256) == []


def test_exact_multiple_without_overlap():
    assert chunk_spans(1024, 512, 0, 256) == [(0, 512), (512, 1024)]


def test_overlap_windows_and_long_enough_tail():
    # stride 462: windows at 0, 462; the tail 924..1300 has 376 >= 256 tokens
    assert chunk_spans(1300, 512, 50, 256) == [(0, 512), (462, 974), (924, 1300)]


def test_short_tail_is_backed_off_not_lost():
    # the blog's sketch would drop 924..1000 (76 tokens) and lose tokens 974..999
    assert chunk_spans(1000, 512, 50, 256) == [(0, 512), (462, 974), (488, 1000)]
    # just over one chunk: the blog's sketch would keep only 0..512 and lose 512..600
    assert chunk_spans(600, 512, 50, 256) == [(0, 512), (88, 600)]


@pytest.mark.parametrize("size, overlap, min_chunk", [(8, 2, 4), (8, 0, 8), (5, 4, 1), (16, 3, 16)])
def test_invariants_over_many_lengths(size, overlap, min_chunk):
    for n in range(size + 1, 12 * size):
        ids = list(range(n))
        chunks = chunk_tokens(ids, size, overlap, min_chunk)
        covered = {t for c in chunks for t in c}
        assert covered == set(ids), n  # no token lost
        assert all(min_chunk <= len(c) <= size for c in chunks), n
        assert chunks[-1][-1] == n - 1 and chunks[0][0] == 0
        assert all(c == list(range(c[0], c[0] + len(c))) for c in chunks)  # contiguous windows
        for prev, cur in zip(chunks, chunks[1:]):
            assert cur[0] > prev[0] and prev[-1] - cur[0] + 1 >= overlap  # real overlap kept


def test_invalid_arguments():
    with pytest.raises(ValueError):
        chunk_spans(100, 10, 10, 5)
    with pytest.raises(ValueError):
        chunk_spans(100, 0, 0, 1)
