//! The expect matcher: which match wins, that the chunking of the output never changes
//! the result, line reading, and the bound.

use bytes::Bytes;
use proptest::prelude::*;
use tuppence_expect::{ExpectBuffer, Pattern, PatternError, Patterns, Step};

fn lits(ps: &[&str]) -> Patterns {
    Patterns::new(ps.iter().map(|p| Pattern::literal(p.as_bytes().to_vec()))).unwrap()
}

/// Feeds `chunks` in order, expecting with `patterns` as often as it matches after each;
/// returns every match as (pattern, consumed) and what was left.
fn run(patterns: &Patterns, chunks: &[&[u8]]) -> (Vec<(usize, Vec<u8>)>, Vec<u8>) {
    let mut buf = ExpectBuffer::default();
    let mut found = Vec::new();
    for chunk in chunks {
        buf.push(Bytes::copy_from_slice(chunk));
        while let Step::Ready(m) = buf.poll_expect(patterns) {
            found.push((m.pattern, m.consumed.to_vec()));
        }
    }
    (found, buf.buffered().to_vec())
}

fn one(patterns: &Patterns, text: &str) -> Option<(usize, String, String)> {
    let mut buf = ExpectBuffer::default();
    buf.push(Bytes::copy_from_slice(text.as_bytes()));
    match buf.poll_expect(patterns) {
        Step::Ready(m) => Some((
            m.pattern,
            String::from_utf8_lossy(m.before()).into_owned(),
            String::from_utf8_lossy(m.matched()).into_owned(),
        )),
        _ => None,
    }
}

#[test]
fn first_to_complete_wins_then_earliest_start_then_lowest_index() {
    // `b` is complete one byte before `abc`.
    assert_eq!(
        one(&lits(&["abc", "b"]), "xabc"),
        Some((1, "xa".into(), "b".into()))
    );
    // Both end at the same byte: the one starting earlier (the longer) wins.
    let p = lits(&["login: ", "Last login: "]);
    assert_eq!(
        one(&p, "Last login: "),
        Some((1, "".into(), "Last login: ".into()))
    );
    // Same text twice: the lower index.
    assert_eq!(
        one(&lits(&["ok", "ok"]), "..ok"),
        Some((0, "..".into(), "ok".into()))
    );
    // A regex and a literal completing at the same byte: the earlier start.
    let p = Patterns::new([Pattern::literal("word: "), Pattern::regex(r"[Pp]ass\w+: ")]).unwrap();
    assert_eq!(
        one(&p, "Password: "),
        Some((1, "".into(), "Password: ".into()))
    );
}

#[test]
fn regex_matches_are_final_when_complete() {
    // Trailing repetition is minimal: the match was complete after one digit.
    let p = Patterns::new([Pattern::regex(r"\d+")]).unwrap();
    assert_eq!(one(&p, "id 12345 ok"), Some((0, "id ".into(), "1".into())));
    // Inner repetition is greedy as usual: the match starts as early as it can.
    let p = Patterns::new([Pattern::regex(r"\d+ apples")]).unwrap();
    assert_eq!(
        one(&p, "x 12345 apples"),
        Some((0, "x ".into(), "12345 apples".into()))
    );
}

#[test]
fn look_around_sees_the_bytes_after_the_end() {
    // `\b` after "foo" must not match inside "foobar" when the whole word has arrived.
    let p = Patterns::new([Pattern::regex(r"foo\b")]).unwrap();
    assert_eq!(
        one(&p, "foobar foo!"),
        Some((0, "foobar ".into(), "foo".into()))
    );
    // `$` is the end of the output received so far (documented as chunk-dependent).
    let p = Patterns::new([Pattern::regex(r"\$ $")]).unwrap();
    assert_eq!(one(&p, "$ ls\n$ "), Some((0, "$ ls\n".into(), "$ ".into())));
}

#[test]
fn caret_anchors_at_the_unconsumed_output() {
    let p = Patterns::new([Pattern::regex(r"^b")]).unwrap();
    let mut buf = ExpectBuffer::default();
    buf.push("ab".into());
    assert_eq!(buf.poll_expect(&p), Step::NeedData);
    let a = Patterns::new([Pattern::literal("a")]).unwrap();
    assert!(matches!(buf.poll_expect(&a), Step::Ready(_)));
    let Step::Ready(m) = buf.poll_expect(&p) else {
        panic!("^b after consuming a")
    };
    assert_eq!(m.matched(), b"b");
}

#[test]
fn patterns_that_would_match_at_once_are_refused() {
    assert_eq!(
        Patterns::new([Pattern::literal("x"), Pattern::literal("")]).unwrap_err(),
        PatternError::MatchesEmpty { index: 1 }
    );
    assert_eq!(
        Patterns::new([Pattern::regex("a*")]).unwrap_err(),
        PatternError::MatchesEmpty { index: 0 }
    );
    assert_eq!(
        Patterns::new(Vec::<Pattern>::new()).unwrap_err(),
        PatternError::NoPatterns
    );
    assert!(matches!(
        Patterns::new([Pattern::regex("(")]).unwrap_err(),
        PatternError::Regex { index: 0, .. }
    ));
}

#[test]
fn raw_bytes_and_invalid_utf8_output() {
    let p = Patterns::new([
        Pattern::regex(r"(?-u:\xFF)x"),
        Pattern::literal(&b"\xfe\xfd"[..]),
    ])
    .unwrap();
    assert_eq!(
        run(&p, &[b"\x00\xff", b"x\xfe", b"\xfd"]).0,
        [(0, b"\x00\xffx".to_vec()), (1, b"\xfe\xfd".to_vec())]
    );
}

#[test]
fn eof_is_its_own_outcome_and_keeps_the_output() {
    let p = lits(&["never"]);
    let mut buf = ExpectBuffer::default();
    buf.push("partial output".into());
    assert_eq!(buf.poll_expect(&p), Step::NeedData);
    buf.set_eof();
    assert_eq!(buf.poll_expect(&p), Step::Eof);
    assert_eq!(buf.buffered(), b"partial output");
    // A match that arrived before the end is still found after it.
    assert!(matches!(buf.poll_expect(&lits(&["out"])), Step::Ready(_)));
}

#[test]
fn lines_strip_lf_and_crlf_and_end_with_a_partial_line() {
    let mut buf = ExpectBuffer::default();
    buf.push("one\r\ntwo\nthr".into());
    assert_eq!(buf.poll_line(), Step::Ready(Bytes::from("one")));
    assert_eq!(buf.poll_line(), Step::Ready(Bytes::from("two")));
    assert_eq!(buf.poll_line(), Step::NeedData);
    buf.push("ee".into());
    buf.set_eof();
    assert_eq!(buf.poll_line(), Step::Ready(Bytes::from("three")));
    assert_eq!(buf.poll_line(), Step::Eof);
}

#[test]
fn the_bound_is_reported_and_nothing_is_dropped() {
    let p = lits(&["END"]);
    let mut buf = ExpectBuffer::new(8);
    assert!(buf.wants_data());
    buf.push("0123456789ab".into());
    // 8 bytes in the buffer, 4 waiting; pushing more is not wanted.
    assert!(!buf.wants_data());
    assert_eq!(buf.buffered(), b"01234567");
    assert_eq!(buf.len(), 12);
    assert_eq!(buf.poll_expect(&p), Step::Full);
    assert_eq!(buf.poll_line(), Step::Full);
    // Consuming makes room: the waiting rest moves in, then more can be pushed.
    assert_eq!(buf.take_all(), Bytes::from("0123456789ab"));
    assert!(buf.wants_data());
    buf.push("xEND".into());
    let Step::Ready(m) = buf.poll_expect(&p) else {
        panic!("END after the take")
    };
    assert_eq!(m.consumed, Bytes::from("xEND"));
}

#[test]
fn a_match_in_a_full_buffer_is_still_found() {
    let mut buf = ExpectBuffer::new(4);
    buf.push("abcdEF".into());
    let Step::Ready(m) = buf.poll_expect(&lits(&["cd"])) else {
        panic!("cd is inside the first 4 bytes")
    };
    assert_eq!(m.consumed, Bytes::from("abcd"));
    assert_eq!(buf.buffered(), b"EF");
}

/// The reference for literals: look after every byte; among the literals ending there,
/// the longest (earliest start), then the lowest index.
fn oracle(patterns: &[Vec<u8>], text: &[u8]) -> (Vec<(usize, Vec<u8>)>, Vec<u8>) {
    let mut found = Vec::new();
    let mut from = 0;
    let mut k = from;
    while k < text.len() {
        k += 1;
        let window = &text[from..k];
        let best = patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| window.ends_with(p))
            .min_by_key(|(i, p)| (usize::MAX - p.len(), *i));
        if let Some((i, _)) = best {
            found.push((i, window.to_vec()));
            from = k;
        }
    }
    (found, text[from..].to_vec())
}

fn chunked(text: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for c in cuts.into_iter().chain([text.len()]) {
        out.push(text[last..c].to_vec());
        last = c;
    }
    out
}

const ATOMS: &[&str] = &[
    "a", "b", "ab", "ba", "[ab]", "a+", "b+a", "(ab|c)", "b?c", r"\w", "(?:ca)*b", "c{2}", r"\bab",
    "[^a]", "(?i)A",
];

fn regex_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ATOMS), 1..4).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn literals_match_what_a_byte_by_byte_reader_sees(
        pats in prop::collection::vec(prop::collection::vec(prop::sample::select(b"abc".to_vec()), 1..4), 1..4),
        text in prop::collection::vec(prop::sample::select(b"abcx".to_vec()), 0..60),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let patterns = Patterns::new(pats.iter().map(|p| Pattern::literal(p.clone()))).unwrap();
        let chunks = chunked(&text, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        prop_assert_eq!(run(&patterns, &refs), oracle(&pats, &text));
    }

    #[test]
    fn any_chunking_gives_the_same_matches(
        pats in prop::collection::vec(prop_oneof![
            regex_strategy().prop_map(Pattern::Regex),
            "[abc]{1,3}".prop_map(|s| Pattern::literal(s.into_bytes())),
        ], 1..4),
        text in prop::collection::vec(prop::sample::select(b"abcA x".to_vec()), 0..80),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let patterns = Patterns::new(pats).unwrap();
        let whole = run(&patterns, &[&text]);
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        prop_assert_eq!(&run(&patterns, &bytes), &whole);
        let chunks = chunked(&text, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        prop_assert_eq!(&run(&patterns, &refs), &whole);
    }

    #[test]
    fn lines_do_not_depend_on_chunking(
        text in prop::collection::vec(prop::sample::select(b"ab\r\n".to_vec()), 0..60),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let lines = |chunks: Vec<Vec<u8>>| {
            let mut buf = ExpectBuffer::default();
            let mut out = Vec::new();
            for c in chunks {
                buf.push(c.into());
                while let Step::Ready(l) = buf.poll_line() { out.push(l.to_vec()); }
            }
            buf.set_eof();
            while let Step::Ready(l) = buf.poll_line() { out.push(l.to_vec()); }
            out
        };
        prop_assert_eq!(lines(chunked(&text, &cuts)), lines(vec![text.clone()]));
    }
}

#[test]
fn a_match_ending_where_the_last_chunk_ended_is_found_when_its_look_ahead_arrives() {
    // `oo\B` cannot match at the end of "foo" (the end of the text is a boundary); once
    // "b" arrives it matches there, one byte before `foob` completes.
    let p = Patterns::new([Pattern::regex(r"oo\B"), Pattern::literal("foob")]).unwrap();
    let mut buf = ExpectBuffer::default();
    buf.push("foo".into());
    assert_eq!(buf.poll_expect(&p), Step::NeedData);
    buf.push("b".into());
    let Step::Ready(m) = buf.poll_expect(&p) else {
        panic!("oo before b")
    };
    assert_eq!((m.pattern, &m.consumed[..]), (0, &b"foo"[..]));
}
