//! Splitting an `exec:` command line into words as a POSIX shell would, without a shell.
//!
//! `exec:COMMAND` runs COMMAND directly (no `/bin/sh -c`), so the string has to be cut into
//! a program and its arguments here. The rules are the shell's quoting rules and nothing
//! more:
//!
//! * blanks (space, tab, newline) separate words outside quotes;
//! * `'…'` keeps everything up to the next `'` literally (no escapes inside);
//! * `"…"` keeps everything literally except that `\` escapes `\`, `"`, `$`, `` ` `` and a
//!   newline (a backslash-newline is removed, as in a shell); any other `\` stays;
//! * outside quotes `\` makes the next character literal (a backslash-newline is removed);
//! * quotes join with what touches them: `a'b c'd` is one word, `''` is an empty word.
//!
//! What a shell would *do* rather than quote — pipes, redirections, `;`, `&`, `(`, `)`,
//! parameter and command substitution (`$`, `` ` ``, also inside `"…"`), globs (`*`, `?`,
//! `[`), `~` and `#` at the start of a word, and a leading `NAME=value` assignment — is
//! refused with a [`WordsError`] that says so, instead of being passed to the program as a
//! literal argument it surely did not expect. Quote such characters to pass them, or run a
//! shell on purpose: `exec:sh -c 'podman exec -i ctr tuppence serve --stdio 2>>log'`.
//!
//! [`join`] is the inverse: it quotes each word only where needed, so
//! `split(&join(words)) == words` for any words (a property test checks it).

use std::borrow::Cow;

/// Why a command line could not be split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WordsError {
    /// Nothing but blanks.
    #[error("empty command")]
    Empty,
    /// A `'` or `"` without its closing partner.
    #[error("unterminated {quote} quote starting at byte {at}")]
    UnterminatedQuote {
        /// The opening quote character.
        quote: char,
        /// Its byte offset in the command line.
        at: usize,
    },
    /// A `\` as the last character: there is nothing for it to escape.
    #[error("the command ends with a backslash that escapes nothing")]
    TrailingBackslash,
    /// A character a shell would act on, outside quotes (or `$`/`` ` `` inside `"…"`).
    #[error(
        "unquoted {ch:?} at byte {at} would mean {meaning} to a shell, but the command runs without one (quote it to pass it literally, or use sh -c '…')"
    )]
    ShellSyntax {
        /// The character.
        ch: char,
        /// Its byte offset in the command line.
        at: usize,
        /// What a shell would do with it.
        meaning: &'static str,
    },
    /// The first word is a `NAME=value` assignment.
    #[error(
        "{word:?} would set an environment variable in a shell, but the command runs without one (use env NAME=value COMMAND…)"
    )]
    Assignment {
        /// The first word.
        word: String,
    },
}

/// What a shell does with `c` when it appears unquoted (`None`: nothing, it is literal).
/// `at_word_start` is true for the first character of a word.
fn shell_meaning(c: char, at_word_start: bool) -> Option<&'static str> {
    Some(match c {
        '|' => "a pipe",
        '&' => "a background job or a list",
        ';' => "a command list",
        '<' | '>' => "a redirection",
        '(' | ')' => "a subshell",
        '$' => "an expansion",
        '`' => "a command substitution",
        '*' | '?' | '[' => "a file name pattern",
        '~' if at_word_start => "the home directory",
        '#' if at_word_start => "a comment",
        _ => return None,
    })
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n')
}

/// Splits `line` into words (see the module documentation for the rules).
pub fn split(line: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word has started even if it is still empty (`''`).
    let mut in_word = false;
    // Where in the first word the first quoted or escaped character went: a shell takes
    // `NAME=` as an assignment only when it is unquoted.
    let mut first_quoted: Option<usize> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if is_blank(c) => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                None => return Err(WordsError::TrailingBackslash),
                // Line continuation: both characters vanish (and do not start a word).
                Some((_, '\n')) => {}
                Some((_, next)) => {
                    if words.is_empty() {
                        first_quoted.get_or_insert(word.len());
                    }
                    word.push(next);
                    in_word = true;
                }
            },
            '\'' => {
                in_word = true;
                if words.is_empty() {
                    first_quoted.get_or_insert(word.len());
                }
                loop {
                    match chars.next() {
                        None => return Err(WordsError::UnterminatedQuote { quote: '\'', at }),
                        Some((_, '\'')) => break,
                        Some((_, inner)) => word.push(inner),
                    }
                }
            }
            '"' => {
                in_word = true;
                if words.is_empty() {
                    first_quoted.get_or_insert(word.len());
                }
                loop {
                    match chars.next() {
                        None => return Err(WordsError::UnterminatedQuote { quote: '"', at }),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek().copied() {
                            Some((_, '\n')) => {
                                chars.next();
                            }
                            Some((_, e @ ('\\' | '"' | '$' | '`'))) => {
                                chars.next();
                                word.push(e);
                            }
                            // Any other backslash inside double quotes is literal; an
                            // unterminated quote is reported by the next turn.
                            _ => word.push('\\'),
                        },
                        Some((i, e @ ('$' | '`'))) => {
                            return Err(WordsError::ShellSyntax {
                                ch: e,
                                at: i,
                                meaning: shell_meaning(e, false).unwrap_or("an expansion"),
                            });
                        }
                        Some((_, inner)) => word.push(inner),
                    }
                }
            }
            c => {
                if let Some(meaning) = shell_meaning(c, !in_word) {
                    return Err(WordsError::ShellSyntax { ch: c, at, meaning });
                }
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let Some(first) = words.first() else {
        return Err(WordsError::Empty);
    };
    let unquoted = first_quoted.map_or(first.as_str(), |at| first.get(..at).unwrap_or(""));
    if looks_like_assignment(unquoted) {
        return Err(WordsError::Assignment {
            word: first.clone(),
        });
    }
    Ok(words)
}

/// `NAME=…` with NAME a shell variable name: what a shell would take as an assignment in
/// front of a command (`word` is the unquoted start of the first word).
fn looks_like_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Characters that never need quoting anywhere in a word.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '+' | '@' | '%')
}

/// `word` as [`split`] (and a POSIX shell) reads it back: unchanged when every character is
/// plain, else in single quotes (a `'` inside written `'\''`). `first` marks the command
/// word, where `=` must be quoted too (it would read as an assignment).
pub fn quote(word: &str, first: bool) -> Cow<'_, str> {
    let plain = !word.is_empty() && word.chars().all(|c| is_plain(c) || (c == '=' && !first));
    if plain {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// The words joined with single spaces, each quoted as [`quote`] does.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&quote(w.as_ref(), i == 0));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Vec<String> {
        match split(line) {
            Ok(w) => w,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    #[test]
    fn blanks_separate_words() {
        assert_eq!(ok("  a\tb\nc  "), ["a", "b", "c"]);
        assert_eq!(
            ok("podman exec -i CTR tuppence serve --stdio"),
            [
                "podman", "exec", "-i", "CTR", "tuppence", "serve", "--stdio"
            ]
        );
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(
            ok(r#"sh -c 'echo "$HOME" \; | x'"#),
            ["sh", "-c", r#"echo "$HOME" \; | x"#]
        );
        assert_eq!(ok("a'b c'd"), ["ab cd"]);
        assert_eq!(ok("x '' y"), ["x", "", "y"]);
        assert_eq!(ok("x ''"), ["x", ""]);
    }

    #[test]
    fn double_quotes_escape_only_their_specials() {
        assert_eq!(ok(r#"x "a\"b\\c\$d\`e\nf""#), ["x", r#"a"b\c$d`e\nf"#]);
        assert_eq!(ok("x \"a\\\nb\""), ["x", "ab"]);
        assert_eq!(ok(r#"x "it's""#), ["x", "it's"]);
        assert_eq!(ok(r#"x "a b"c"#), ["x", "a bc"]);
    }

    #[test]
    fn backslash_outside_quotes() {
        assert_eq!(ok(r"x a\ b \| \$ \\"), ["x", "a b", "|", "$", "\\"]);
        // A backslash-newline joins lines and starts no word.
        assert_eq!(ok("x \\\n y"), ["x", "y"]);
        assert_eq!(ok("x a\\\nb"), ["x", "ab"]);
        assert_eq!(split("x \\"), Err(WordsError::TrailingBackslash));
    }

    #[test]
    fn unterminated_quotes_name_their_start() {
        assert_eq!(
            split("sh -c 'echo"),
            Err(WordsError::UnterminatedQuote { quote: '\'', at: 6 })
        );
        assert_eq!(
            split(r#"x "a\"#),
            Err(WordsError::UnterminatedQuote { quote: '"', at: 2 })
        );
    }

    #[test]
    fn shell_syntax_is_refused() {
        for (line, ch) in [
            ("ssh h x | tee log", '|'),
            ("a && b", '&'),
            ("a; b", ';'),
            ("a > f", '>'),
            ("a < f", '<'),
            ("(a)", '('),
            ("echo $HOME", '$'),
            ("echo `id`", '`'),
            (r#"echo "$HOME""#, '$'),
            (r#"echo "`id`""#, '`'),
            ("ls *.rs", '*'),
            ("ls ?", '?'),
            ("ls [ab]", '['),
            ("~/bin/agent", '~'),
            ("a #comment", '#'),
        ] {
            match split(line) {
                Err(WordsError::ShellSyntax { ch: c, .. }) => assert_eq!(c, ch, "{line:?}"),
                other => panic!("{line:?}: {other:?}"),
            }
        }
        // Inside a word, ~ and # are literal, as in a shell.
        assert_eq!(ok("a~b c#d"), ["a~b", "c#d"]);
        // Quoted, every one of them passes.
        assert_eq!(
            ok(r"x '|' \& ';' '$HOME' '*'"),
            ["x", "|", "&", ";", "$HOME", "*"]
        );
        let e = split("a | b").expect_err("pipe");
        assert!(
            e.to_string().contains("pipe") && e.to_string().contains("sh -c"),
            "{e}"
        );
    }

    #[test]
    fn assignments_and_empty_lines_are_refused() {
        assert_eq!(split(""), Err(WordsError::Empty));
        assert_eq!(split(" \t\n"), Err(WordsError::Empty));
        assert_eq!(split("\\\n"), Err(WordsError::Empty));
        assert_eq!(
            split("FOO=bar cmd"),
            Err(WordsError::Assignment {
                word: "FOO=bar".into()
            })
        );
        // Only in front: later words with `=` are ordinary arguments.
        assert_eq!(ok("env FOO=bar cmd"), ["env", "FOO=bar", "cmd"]);
        assert_eq!(
            ok("ssh -o BatchMode=yes h"),
            ["ssh", "-o", "BatchMode=yes", "h"]
        );
        // Not a variable name: a program name with `=` (odd, but a shell runs it too).
        assert_eq!(ok("./a=b"), ["./a=b"]);
        assert_eq!(ok("'FOO=bar'"), ["FOO=bar"]);
        assert_eq!(ok("FOO'=bar'"), ["FOO=bar"]);
        assert_eq!(ok("\\FOO=bar"), ["FOO=bar"]);
        assert!(split("FOO='b a r' cmd").is_err());
    }

    #[test]
    fn join_quotes_only_what_needs_it() {
        assert_eq!(
            join(&["ssh", "-o", "BatchMode=yes", "h"]),
            "ssh -o BatchMode=yes h"
        );
        assert_eq!(
            join(&["sh", "-c", "echo 'hi' $X"]),
            r"sh -c 'echo '\''hi'\'' $X'"
        );
        assert_eq!(join(&["x", ""]), "x ''");
        assert_eq!(join(&["A=b", "c=d"]), "'A=b' c=d");
        assert_eq!(join(&["~x", "#y", "a~#"]), "'~x' '#y' 'a~#'");
    }

    #[test]
    fn join_then_split_gives_the_words_back() {
        let cases: &[&[&str]] = &[
            &["a"],
            &[
                "a b", "", "'", "\"", "\\", "$x", "`y`", "*?[", "~", "#", "\n", "\t",
            ],
            &["FOO=bar", "x=y"],
            &["ünïcödé", "日本"],
        ];
        for words in cases {
            assert_eq!(ok(&join(words)), *words);
        }
    }
}
