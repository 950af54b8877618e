//! Refusals of a file the operator wrote (a manifest, a network file), pointing at the file, the
//! line and the field, so that the fix is one edit away. The first line of the message is
//! `file:line: field: what`, the form editors and terminals turn into a link; the offending source
//! line follows, underlined.

use std::fmt;
use std::ops::Range;

/// Something wrong in an input file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    /// The path as the operator gave it, so the message points where they looked.
    pub file: String,
    /// 1-based line, when the error has a place in the file.
    pub line: Option<usize>,
    /// The field at fault, as written in the file (`call.to`, `host.coord`).
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub what: String,
    /// The source line and a caret line under the offending text.
    snippet: Option<String>,
}

impl std::error::Error for InputError {}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.what)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

/// A file's name and text, to locate errors in it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Self { file, text }
    }

    /// An error about `field`, at the text spanned by `span`.
    pub fn at(&self, span: Range<usize>, field: &str, what: impl Into<String>) -> InputError {
        InputError {
            file: self.file.to_string(),
            line: Some(self.line_of(span.start)),
            field: Some(field.to_string()),
            what: what.into(),
            snippet: self.snippet(span),
        }
    }

    /// An error about the whole file.
    pub fn whole(&self, what: impl Into<String>) -> InputError {
        InputError {
            file: self.file.to_string(),
            line: None,
            field: None,
            what: what.into(),
            snippet: None,
        }
    }

    /// A syntax or type error from the TOML parser, which knows the place but not always the field.
    pub fn toml(&self, err: &toml::de::Error) -> InputError {
        let what = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        match err.span() {
            Some(span) => InputError {
                file: self.file.to_string(),
                line: Some(self.line_of(span.start)),
                field: None,
                what,
                snippet: self.snippet(span),
            },
            None => self.whole(what),
        }
    }

    /// 1-based line holding byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn snippet(&self, span: Range<usize>) -> Option<String> {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text.get(line_start..line_end)?.trim_end_matches('\r');
        if line.trim().is_empty() {
            return None;
        }
        let col = self.text[line_start..start].chars().count();
        let width = self
            .text
            .get(start..span.end.clamp(start, line_end))
            .map_or(1, |s| s.chars().count().max(1));
        let number = self.line_of(start).to_string();
        let pad = " ".repeat(number.len());
        Some(format!(
            "{number} | {line}\n{pad} | {}{}",
            " ".repeat(col),
            "^".repeat(width)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_field_and_underlines() {
        let text = "a = 1\nname = \"x\"\n";
        let src = Source::new("f.toml", text);
        let start = text.find("\"x\"").unwrap_or(0);
        let e = src.at(start..start + 3, "name", "bad name");
        assert_eq!(e.line, Some(2));
        let shown = e.to_string();
        assert!(shown.starts_with("f.toml:2: name: bad name\n"), "{shown}");
        assert!(shown.ends_with("  |        ^^^"), "{shown}");
    }
}
