//! Patterns an `expect` waits for: literal byte strings and regular expressions.
//!
//! Both kinds are compiled to the regex crate's engine (`regex-automata`'s meta regex),
//! literals as escaped literals, so that one search routine serves both and a literal
//! costs what a substring search costs (the engine's literal prefilter).
//!
//! Why `regex-automata` and not `regex::bytes::Regex`: finding the *first* match to
//! complete needs searches that stop at a given end offset while look-around assertions
//! (`\b`, `$`) still see the bytes around that end ([`regex_automata::Input::range`]).
//! `regex::bytes::Regex` can only search a sliced haystack, where the slice end looks like
//! the end of the text: `foo\b` would match inside `foobar`. The syntax is the regex
//! crate's, unchanged.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use regex_automata::meta;
use regex_syntax::hir::Hir;

/// One thing to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// These exact bytes.
    Literal(Bytes),
    /// A regular expression in the regex crate's syntax, matched against bytes (`.` and
    /// classes match UTF-8 encoded characters; `(?-u:\xFF)` matches a raw byte).
    Regex(String),
}

impl Pattern {
    pub fn literal(bytes: impl Into<Bytes>) -> Pattern {
        Pattern::Literal(bytes.into())
    }

    pub fn regex(pattern: impl Into<String>) -> Pattern {
        Pattern::Regex(pattern.into())
    }
}

impl From<&str> for Pattern {
    /// A literal.
    fn from(s: &str) -> Pattern {
        Pattern::Literal(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&[u8]> for Pattern {
    /// A literal.
    fn from(s: &[u8]) -> Pattern {
        Pattern::Literal(Bytes::copy_from_slice(s))
    }
}

/// Why a set of patterns was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// An expect needs at least one pattern.
    #[error("no pattern given")]
    NoPatterns,
    /// The pattern matches the empty string, so it would match at once, before any
    /// output (an empty literal, `a*`, `^`).
    #[error("pattern {index} can match empty text, so it would match before any output")]
    MatchesEmpty { index: usize },
    /// The regular expression does not parse or is too big.
    #[error("pattern {index} is not a valid regular expression: {message}")]
    Regex { index: usize, message: String },
}

/// Source of [`Patterns::id`]: a buffer remembers how far it searched for one set.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled list of patterns; the index of a pattern in the list is what a match
/// reports. Compile once and reuse it across expects when the same patterns recur.
#[derive(Clone, Debug)]
pub struct Patterns {
    id: u64,
    items: Vec<Compiled>,
}

#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub(crate) source: Pattern,
    pub(crate) regex: meta::Regex,
    /// The longest text a match can span, if bounded: a later search need not look
    /// further back than that from where the previous one stopped.
    pub(crate) max_len: Option<usize>,
}

impl Patterns {
    pub fn new<I, P>(patterns: I) -> Result<Patterns, PatternError>
    where
        I: IntoIterator<Item = P>,
        P: Into<Pattern>,
    {
        let mut items = Vec::new();
        for (index, p) in patterns.into_iter().enumerate() {
            items.push(compile(index, p.into())?);
        }
        if items.is_empty() {
            return Err(PatternError::NoPatterns);
        }
        Ok(Patterns {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            items,
        })
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never true: a set has at least one pattern.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The pattern at `index`, as given.
    pub fn get(&self, index: usize) -> Option<&Pattern> {
        self.items.get(index).map(|c| &c.source)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn compiled(&self) -> &[Compiled] {
        &self.items
    }
}

fn compile(index: usize, source: Pattern) -> Result<Compiled, PatternError> {
    let bad = |message: String| PatternError::Regex { index, message };
    let hir = match &source {
        Pattern::Literal(bytes) => Hir::literal(bytes.to_vec()),
        Pattern::Regex(text) => regex_syntax::ParserBuilder::new()
            // Output is bytes, not necessarily UTF-8: allow `(?-u:\xFF)`.
            .utf8(false)
            .build()
            .parse(text)
            .map_err(|e| bad(e.to_string()))?,
    };
    let props = hir.properties();
    // `None` means the pattern can never match (an empty class): harmless, it just
    // never wins.
    if props.minimum_len() == Some(0) {
        return Err(PatternError::MatchesEmpty { index });
    }
    let regex = meta::Regex::builder()
        .configure(meta::Config::new().utf8_empty(false))
        .build_from_hir(&hir)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Compiled {
        max_len: props.maximum_len(),
        source,
        regex,
    })
}
