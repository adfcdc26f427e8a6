//! Byte-level SQL lexer: cuts raw SQL bytes into whitespace, comments, literals, words and
//! punctuation the way PostgreSQL's scanner does, without decoding them (never lossy, never
//! panics, linear time).
//!
//! Assumes `standard_conforming_strings = on` (backslash is literal in `'...'`, an escape only
//! in `E'...'`) and an ASCII-safe client encoding: bytes >= 0x80 are identifier characters.

/// What a token is; only the distinctions the analysis needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A run of spaces, tabs, newlines, carriage returns or form feeds.
    Space,
    /// `--` up to (not including) the end of the line.
    LineComment,
    /// `/* ... */`, nested as PostgreSQL nests them.
    BlockComment,
    /// A `/*` comment that never closes: a syntax error in PostgreSQL, so it is kept as a
    /// significant token (normalising it away would give an invalid statement a valid key).
    Unterminated,
    /// An unquoted identifier or keyword.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// A quote-delimited literal: `'...'`, `E'...'`, `B'...'`, `X'...'`, `N'...'`, `U&'...'`.
    String,
    /// `$tag$ ... $tag$`.
    DollarString,
    /// `$1`, `$2`, ...
    Param,
    /// A numeric literal (loosely: digits, letters, underscores and dots).
    Number,
    /// Any other single byte (operators, parentheses, `;`, `,`, `.`, ...).
    Punct,
}

/// One token: its kind and its byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// Whitespace and comments: what PostgreSQL treats as a token separator.
    pub fn is_trivia(&self) -> bool {
        matches!(
            self.kind,
            Kind::Space | Kind::LineComment | Kind::BlockComment
        )
    }

    pub fn is_comment(&self) -> bool {
        matches!(self.kind, Kind::LineComment | Kind::BlockComment)
    }

    /// The token's bytes (empty if the range were ever out of bounds).
    pub fn bytes<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        src.get(self.start..self.end).unwrap_or_default()
    }

    /// Whether this is the unquoted word `kw` (ASCII case-insensitive).
    pub fn is_word(&self, src: &[u8], kw: &str) -> bool {
        self.kind == Kind::Word && self.bytes(src).eq_ignore_ascii_case(kw.as_bytes())
    }

    /// Whether this is the single punctuation byte `b`.
    pub fn is_punct(&self, src: &[u8], b: u8) -> bool {
        self.kind == Kind::Punct && self.bytes(src) == [b]
    }
}

/// Iterator over the tokens of `src`. Every step consumes at least one byte.
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a [u8]) -> Self {
        Self { src, pos: 0 }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }
}

/// All tokens of `src`.
pub(crate) fn tokens(src: &[u8]) -> Vec<Token> {
    Lexer::new(src).collect()
}

/// The tokens of `src` that are not whitespace or comments.
pub(crate) fn significant(src: &[u8]) -> Vec<Token> {
    Lexer::new(src).filter(|t| !t.is_trivia()).collect()
}

// PostgreSQL's `space` class without `\v`: PostgreSQL 15 does not treat a vertical tab as
// whitespace, so neither do we (normalising it away could make an invalid statement share a
// cache key with a valid one).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

pub(crate) fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(crate) fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

// A dollar-quote tag may not contain `$` (PostgreSQL's dolq_cont).
fn is_dolq_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let b = self.at(start)?;
        let next = self.at(start + 1);
        let (kind, end) = match b {
            _ if is_space(b) => (Kind::Space, self.scan_while(start, is_space)),
            b'-' if next == Some(b'-') => (Kind::LineComment, self.scan_line_comment(start)),
            b'/' if next == Some(b'*') => match self.scan_block_comment(start) {
                Some(end) => (Kind::BlockComment, end),
                None => (Kind::Unterminated, self.src.len()),
            },
            b'\'' => (Kind::String, self.scan_quoted(start + 1, b'\'', false)),
            b'"' => (Kind::QuotedIdent, self.scan_quoted(start + 1, b'"', false)),
            b'e' | b'E' if next == Some(b'\'') => {
                (Kind::String, self.scan_quoted(start + 2, b'\'', true))
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                (Kind::String, self.scan_quoted(start + 2, b'\'', false))
            }
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'\'') => {
                (Kind::String, self.scan_quoted(start + 3, b'\'', false))
            }
            b'u' | b'U' if next == Some(b'&') && self.at(start + 2) == Some(b'"') => {
                (Kind::QuotedIdent, self.scan_quoted(start + 3, b'"', false))
            }
            b'$' => self.scan_dollar(start),
            b'0'..=b'9' => (Kind::Number, self.scan_number(start)),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                (Kind::Number, self.scan_number(start + 1))
            }
            _ if is_ident_start(b) => (Kind::Word, self.scan_while(start, is_ident_cont)),
            _ => (Kind::Punct, start + 1),
        };
        // Every branch consumes at least one byte; the max() makes that structural.
        let end = end.max(start + 1).min(self.src.len());
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

impl Lexer<'_> {
    fn scan_while(&self, mut i: usize, pred: fn(u8) -> bool) -> usize {
        while self.at(i).is_some_and(pred) {
            i += 1;
        }
        i
    }

    fn scan_line_comment(&self, start: usize) -> usize {
        let mut i = start + 2;
        while let Some(b) = self.at(i) {
            if b == b'\n' || b == b'\r' {
                break;
            }
            i += 1;
        }
        i
    }

    /// The end of the comment, or `None` if it never closes.
    fn scan_block_comment(&self, start: usize) -> Option<usize> {
        let mut depth = 0usize;
        let mut i = start;
        while let Some(b) = self.at(i) {
            let next = self.at(i + 1);
            if b == b'/' && next == Some(b'*') {
                depth += 1;
                i += 2;
            } else if b == b'*' && next == Some(b'/') {
                depth = depth.saturating_sub(1);
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            } else {
                i += 1;
            }
        }
        None
    }

    /// From just after the opening quote to just after the closing one (or the end). A doubled
    /// quote is an escaped quote; with `backslash`, `\` escapes the next byte.
    fn scan_quoted(&self, mut i: usize, quote: u8, backslash: bool) -> usize {
        while let Some(b) = self.at(i) {
            if backslash && b == b'\\' {
                i += 2;
            } else if b == quote {
                if self.at(i + 1) == Some(quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            } else {
                i += 1;
            }
        }
        self.src.len()
    }

    fn scan_dollar(&self, start: usize) -> (Kind, usize) {
        if self.at(start + 1).is_some_and(|b| b.is_ascii_digit()) {
            return (
                Kind::Param,
                self.scan_while(start + 1, |b| b.is_ascii_digit()),
            );
        }
        // `$$` or `$tag$` opens a dollar-quoted string; anything else is a lone `$`.
        let mut i = start + 1;
        if self.at(i).is_some_and(is_ident_start) {
            i = self.scan_while(i, is_dolq_cont);
        }
        if self.at(i) != Some(b'$') {
            return (Kind::Punct, start + 1);
        }
        let delim = self.src.get(start..=i).unwrap_or_default();
        let body = i + 1;
        // Each candidate comparison stops at the first mismatch, and a mismatch happens at the
        // latest on the next `$`, so the search stays linear overall.
        let mut j = body;
        while let Some(off) = self
            .src
            .get(j..)
            .and_then(|rest| rest.iter().position(|&b| b == b'$'))
        {
            let at = j + off;
            if self
                .src
                .get(at..)
                .is_some_and(|rest| rest.starts_with(delim))
            {
                return (Kind::DollarString, at + delim.len());
            }
            j = at + 1;
        }
        (Kind::DollarString, self.src.len())
    }

    fn scan_number(&self, mut i: usize) -> usize {
        while let Some(b) = self.at(i) {
            let exponent_sign = (b == b'+' || b == b'-')
                && i > 0
                && self.at(i - 1).is_some_and(|p| p == b'e' || p == b'E')
                && self.at(i + 1).is_some_and(|n| n.is_ascii_digit());
            let dot = b == b'.' && self.at(i + 1) != Some(b'.');
            if b.is_ascii_alphanumeric() || b == b'_' || dot || exponent_sign {
                i += 1;
            } else {
                break;
            }
        }
        i
    }
}
