//! Reading a stream of lines: blank lines, header lines and records, with the format
//! following the headers a file carries.
//!
//! S3 delivery starts every file with a header; concatenated files repeat it mid-stream,
//! possibly with another field list. A [`Decoder`] recognises those lines, so no caller
//! ever mistakes a header for a bad record or a record for a header.

use crate::format::Format;
use crate::record::{trim_line_end, ParseError, Record};

/// What one line of input turned out to be.
// Boxing the record would allocate once per line, which is what the zero-copy design avoids.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Line<'a> {
    /// Empty, only whitespace, or a `#` comment.
    Blank,
    /// A header line naming the fields.
    Header,
    /// A record.
    Record(Record<'a>),
}

/// What a line is, before any record parsing.
#[derive(Debug)]
pub enum LineKind {
    Blank,
    Header(Format),
    Data,
}

/// Tells blank lines, comments and header lines from data lines.
pub fn line_kind(line: &[u8]) -> LineKind {
    let trimmed = trim_line_end(line);
    match trimmed.iter().position(|&b| b != b' ' && b != b'\t') {
        None => LineKind::Blank,
        Some(first) if trimmed[first] == b'#' => LineKind::Blank,
        Some(_) => match Format::from_header_line(trimmed) {
            Some(f) => LineKind::Header(f),
            None => LineKind::Data,
        },
    }
}

/// Turns lines into records, following header lines unless the format was pinned.
#[derive(Clone, Debug)]
pub struct Decoder {
    format: Format,
    follow_headers: bool,
}

impl Decoder {
    /// A decoder that starts with `format` and switches to the fields of any header line.
    pub fn following_headers(format: Format) -> Self {
        Decoder {
            format,
            follow_headers: true,
        }
    }

    /// A decoder that always uses `format`; header lines are still recognised and skipped.
    pub fn pinned(format: Format) -> Self {
        Decoder {
            format,
            follow_headers: false,
        }
    }

    /// The format records are parsed in now.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Takes a header line's format, unless the format is pinned; returns whether it changed.
    pub fn header(&mut self, format: Format) -> bool {
        if self.follow_headers && format != self.format {
            self.format = format;
            return true;
        }
        false
    }

    /// Classifies and parses one line (its line ending may be included).
    pub fn decode<'a>(&'a mut self, line: &'a [u8]) -> Result<Line<'a>, ParseError> {
        match line_kind(line) {
            LineKind::Blank => Ok(Line::Blank),
            LineKind::Header(f) => {
                self.header(f);
                Ok(Line::Header)
            }
            LineKind::Data => Record::parse(&self.format, line).map(Line::Record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::Field;

    #[test]
    fn follows_headers_mid_stream() {
        let mut d = Decoder::following_headers(Format::default_v2());
        assert!(matches!(d.decode(b"\r\n").unwrap(), Line::Blank));
        assert!(matches!(d.decode(b"   ").unwrap(), Line::Blank));
        assert!(matches!(
            d.decode(b"srcaddr dstport\n").unwrap(),
            Line::Header
        ));
        match d.decode(b"10.0.0.1 443\n").unwrap() {
            Line::Record(r) => {
                assert_eq!(r.srcaddr(), Some("10.0.0.1".parse().unwrap()));
                assert_eq!(r.dstport(), Some(443));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.decode(b"srcaddr dstport").unwrap(),
            Line::Header
        ));
        assert_eq!(d.format().fields(), &[Field::SrcAddr, Field::DstPort]);
    }

    #[test]
    fn pinned_ignores_headers() {
        let mut d = Decoder::pinned(Format::default_v2());
        assert!(matches!(
            d.decode(b"srcaddr dstport").unwrap(),
            Line::Header
        ));
        assert_eq!(d.format().len(), 14);
        let e = d.decode(b"10.0.0.1 443").unwrap_err();
        assert_eq!(e.reason(), "invalid_number");
    }
}
