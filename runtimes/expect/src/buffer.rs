//! The output a chat has received and not consumed yet, and the search for the first
//! match in it.

use bytes::{Bytes, BytesMut};
use regex_automata::Input;

use crate::Patterns;

/// Unconsumed output a chat keeps by default: 1 MiB.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// A successful expect: which pattern matched and the output consumed through the match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the pattern in its [`Patterns`].
    pub pattern: usize,
    /// Everything consumed: the output before the match, then the match.
    pub consumed: Bytes,
    /// Where the match starts in `consumed` (it ends at its end).
    pub start: usize,
}

impl Match {
    /// The matched text.
    pub fn matched(&self) -> &[u8] {
        self.consumed.get(self.start..).unwrap_or_default()
    }

    /// The output skipped before the match.
    pub fn before(&self) -> &[u8] {
        self.consumed.get(..self.start).unwrap_or_default()
    }
}

/// What [`ExpectBuffer::poll_expect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Done: the match (consumed from the buffer), or the line.
    Ready(T),
    /// No match, and the buffer holds [`ExpectBuffer::limit`] bytes: nothing more can be
    /// taken until the caller consumes some (`take_all`, `clear`). Nothing was dropped.
    Full,
    /// No match, and the output has ended ([`ExpectBuffer::set_eof`]).
    Eof,
    /// No match yet: push more output (or give up at the caller's deadline).
    NeedData,
}

/// The pattern-matching buffer of a chat: I/O-free, fed the command's output in whatever
/// chunks it arrives.
///
/// # Which match wins
///
/// The result is what a reader that looked after every single byte would report, so it
/// does not depend on how the output was split into chunks:
///
/// * the match that **completes first** (at the smallest end offset) wins;
/// * among matches completing at the same byte, the one that **starts earliest** — the
///   longest — wins; then the lowest pattern index.
///
/// So with the patterns `"login: "` and `"Last login: "`, the output `Last login: ` gives
/// `Last login: ` (both end at the same byte), while with `"abc"` and `"b"` the output
/// `abc` gives `b`: it was complete one byte before `abc` was (expect(1) and pexpect
/// reading byte by byte do the same). A match is final once found: a regex whose end
/// could take more bytes matches as little as it can there (`\d+` finds one digit; write
/// `\d+\s` for the whole number), as pexpect documents for its trailing `+` and `*`.
///
/// The text a regex sees is the unconsumed output: `^` matches where it starts (after the
/// last match), as in expect(1). Assertions that look *past* a match's end (`$`, `\z`, a
/// `\b` or `\B` at the end) see the end of the output received so far as the end of the
/// text, so what they match can depend on where a chunk ended; everything else does not.
///
/// # Bounded
///
/// At most [`limit`](Self::limit) bytes are kept unconsumed, plus the rest of the one
/// chunk that did not fit (pushing stops while there is such a rest: see
/// [`wants_data`](Self::wants_data)). A search that finds nothing in a full buffer
/// reports [`Step::Full`]; nothing is ever dropped.
#[derive(Debug)]
pub struct ExpectBuffer {
    buf: BytesMut,
    limit: usize,
    /// The part of a pushed chunk beyond the limit; moved in as the buffer is consumed.
    overflow: Bytes,
    eof: bool,
    /// For the patterns with this id: no match ends before this offset of `buf`, so a
    /// later search only looks for matches ending at or after it.
    searched: Option<(u64, usize)>,
}

impl Default for ExpectBuffer {
    fn default() -> Self {
        ExpectBuffer::new(DEFAULT_LIMIT)
    }
}

impl ExpectBuffer {
    /// A buffer that keeps at most `limit` (at least 1) unconsumed bytes.
    pub fn new(limit: usize) -> ExpectBuffer {
        ExpectBuffer {
            buf: BytesMut::new(),
            limit: limit.max(1),
            overflow: Bytes::new(),
            eof: false,
            searched: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The unconsumed output (without a rest that did not fit yet).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Unconsumed bytes, including a rest that did not fit yet.
    pub fn len(&self) -> usize {
        self.buf.len() + self.overflow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while the caller should push output: the output has not ended and no pushed
    /// chunk is waiting for room.
    pub fn wants_data(&self) -> bool {
        !self.eof && self.overflow.is_empty()
    }

    /// True once [`set_eof`](Self::set_eof) was called.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Appends output. What does not fit under the limit is kept aside and moved in as
    /// the buffer is consumed; push only while [`wants_data`](Self::wants_data) is true
    /// to keep memory bounded (a push beyond that is still kept, never dropped).
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.overflow.is_empty() {
            self.overflow = data;
        } else {
            let mut joined = BytesMut::with_capacity(self.overflow.len() + data.len());
            joined.extend_from_slice(&self.overflow);
            joined.extend_from_slice(&data);
            self.overflow = joined.freeze();
        }
        self.refill();
    }

    /// Marks the end of the output: nothing more will be pushed.
    pub fn set_eof(&mut self) {
        self.eof = true;
    }

    /// Takes all unconsumed output (including a rest that had not fit yet).
    pub fn take_all(&mut self) -> Bytes {
        let mut all = self.buf.split();
        if !self.overflow.is_empty() {
            all.extend_from_slice(&self.overflow);
            self.overflow = Bytes::new();
        }
        self.searched = None;
        all.freeze()
    }

    /// Discards all unconsumed output.
    pub fn clear(&mut self) {
        self.take_all();
    }

    /// Looks for the first match of `patterns` (see the type's docs) and consumes the
    /// output through it.
    pub fn poll_expect(&mut self, patterns: &Patterns) -> Step<Match> {
        if let Some(found) = self.find(patterns) {
            let consumed = self.consume(found.end);
            return Step::Ready(Match {
                pattern: found.pattern,
                consumed,
                start: found.start,
            });
        }
        self.stalled()
    }

    /// Takes the next line: the bytes before the next `\n`, without it and without a
    /// `\r` before it (a tty ends lines with `\r\n`). At the end of the output, a last
    /// line without `\n` is returned as it is; after that, `Eof`.
    pub fn poll_line(&mut self) -> Step<Bytes> {
        if let Some(pos) = memchr::memchr(b'\n', &self.buf) {
            let line = self.consume(pos + 1);
            let mut end = pos;
            if end > 0 && line.get(end - 1) == Some(&b'\r') {
                end -= 1;
            }
            return Step::Ready(line.slice(..end));
        }
        if self.eof && self.overflow.is_empty() && !self.buf.is_empty() {
            let rest = self.take_all();
            return Step::Ready(rest);
        }
        self.stalled()
    }

    /// For a wait for the command's end: `Eof` once the output has ended (everything
    /// unconsumed stays buffered), `Full` while the buffer is full before that.
    pub fn poll_end(&self) -> Step<std::convert::Infallible> {
        if self.eof { Step::Eof } else { self.stalled() }
    }

    /// Why nothing was found: full, ended or waiting.
    fn stalled<T>(&self) -> Step<T> {
        if self.buf.len() >= self.limit {
            Step::Full
        } else if self.eof && self.overflow.is_empty() {
            Step::Eof
        } else {
            Step::NeedData
        }
    }

    /// Removes the first `n` bytes and returns them; moves waiting output in.
    fn consume(&mut self, n: usize) -> Bytes {
        let taken = self.buf.split_to(n.min(self.buf.len())).freeze();
        self.searched = None;
        self.refill();
        taken
    }

    fn refill(&mut self) {
        let room = self.limit.saturating_sub(self.buf.len());
        if room == 0 || self.overflow.is_empty() {
            return;
        }
        let piece = self.overflow.split_to(room.min(self.overflow.len()));
        self.buf.extend_from_slice(&piece);
    }

    /// The first match to complete, as described on the type.
    ///
    /// `f(k)` = "some pattern has a match ending at or before `k`" is monotone in `k`
    /// (a search over `..k` keeps the bytes after `k` as context), so the first end is
    /// found by bisection between where the last search stopped and the buffer's end.
    fn find(&mut self, patterns: &Patterns) -> Option<Found> {
        let hay: &[u8] = &self.buf;
        let len = hay.len();
        // No match ended before `from` at the last search with these patterns. One that
        // ends exactly there may appear now: an assertion at the old end (`\B`) sees a
        // byte where it saw the end of the text.
        let from = match self.searched {
            Some((id, at)) if id == patterns.id() && at <= len => at,
            _ => 0,
        };
        // Where a pattern's match that ends at or after `from` can start.
        let starts: Vec<usize> = patterns
            .compiled()
            .iter()
            .map(|c| c.max_len.map_or(0, |m| from.saturating_sub(m)))
            .collect();
        let any_by = |end: usize| {
            patterns
                .compiled()
                .iter()
                .zip(&starts)
                .any(|(c, &s)| s <= end && c.regex.is_match(Input::new(hay).range(s..end)))
        };
        if !any_by(len) {
            self.searched = Some((patterns.id(), len));
            return None;
        }
        // The smallest end with a match: `from` itself, or found by bisection between
        // `lo` (none ends by it) and `hi` (one does).
        let end = if any_by(from) {
            from
        } else {
            let (mut lo, mut hi) = (from, len);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if any_by(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        };
        // Among the patterns with a match ending there: the earliest start, then the
        // lowest index. Every match inside `..end` ends exactly at `end` (none ends
        // earlier), so a leftmost search finds the earliest start.
        let mut best: Option<Found> = None;
        for (pattern, (c, &s)) in patterns.compiled().iter().zip(&starts).enumerate() {
            if s > end {
                continue;
            }
            let Some(m) = c.regex.search(&Input::new(hay).range(s..end)) else {
                continue;
            };
            if best.as_ref().is_none_or(|b| m.start() < b.start) {
                best = Some(Found {
                    pattern,
                    start: m.start(),
                    end: m.end(),
                });
            }
        }
        best
    }
}

/// A match located in the buffer.
#[derive(Clone, Copy, Debug)]
struct Found {
    pattern: usize,
    start: usize,
    end: usize,
}
