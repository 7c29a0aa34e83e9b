//! Record formats: which fields a flow log writes, in which order.
//!
//! A format is data, never guessed from a field count. It comes from the AWS format string
//! (`${version} ${account-id} …`, as DescribeFlowLogs returns it), from the header line that
//! S3 delivery writes first in every file, or from a list of names in either spelling.

use std::fmt;

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, multispace0};
use nom::combinator::{all_consuming, map};
use nom::multi::many1;
use nom::sequence::{delimited, preceded, terminated};
use nom::{IResult, Parser};

use crate::field::{Field, Kind, FIELD_COUNT};

/// The fields of the default format, in order: all version 2 fields.
pub const DEFAULT_FIELDS: [Field; 14] = [
    Field::Version,
    Field::AccountId,
    Field::InterfaceId,
    Field::SrcAddr,
    Field::DstAddr,
    Field::SrcPort,
    Field::DstPort,
    Field::Protocol,
    Field::Packets,
    Field::Bytes,
    Field::Start,
    Field::End,
    Field::Action,
    Field::LogStatus,
];

/// The default format as AWS spells it in `LogFormat`.
pub const DEFAULT_FORMAT_STRING: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

const NOT_PRESENT: u8 = u8::MAX;

/// An ordered list of distinct fields, with a reverse index from field to column.
#[derive(Clone, PartialEq, Eq)]
pub struct Format {
    columns: Vec<Field>,
    /// `columns[i].kind()`, kept beside them for the parser's inner loop.
    kinds: Vec<Kind>,
    position: [u8; FIELD_COUNT],
}

/// Why a format could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// No field at all.
    Empty,
    /// A name that is not a flow-log field; `column` is 1-based, in bytes.
    UnknownField { name: String, column: usize },
    /// A field listed twice.
    DuplicateField { field: Field, column: usize },
    /// Text that is neither `${name}` nor a name, such as an unclosed `${`.
    Malformed { column: usize, text: String },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Empty => f.write_str("the format lists no field"),
            FormatError::UnknownField { name, column } => write!(
                f,
                "unknown field `{name}` at column {column} (fields are AWS names such as `srcaddr` or `pkt-dstaddr`, versions 2 to 11)"
            ),
            FormatError::DuplicateField { field, column } => {
                write!(f, "field `{field}` is listed twice (again at column {column})")
            }
            FormatError::Malformed { column, text } => {
                write!(f, "malformed format at column {column}: `{text}` (expected `${{field-name}}` or a field name)")
            }
        }
    }
}

impl std::error::Error for FormatError {}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_separator(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b',' || b == b'\r' || b == b'\n'
}

/// One name, as `${name}` or bare, with the separators after it.
fn name_token(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(
        alt((
            delimited(tag("${"), take_while1(is_name_byte), char('}')),
            take_while1(is_name_byte),
        )),
        nom::bytes::complete::take_while(is_separator),
    )
    .parse(input)
}

fn name_list(input: &[u8]) -> IResult<&[u8], Vec<&[u8]>> {
    all_consuming(preceded(multispace0, many1(map(name_token, |n| n)))).parse(input)
}

impl Format {
    /// Builds a format from fields in order.
    pub fn new(fields: &[Field]) -> Result<Self, FormatError> {
        if fields.is_empty() {
            return Err(FormatError::Empty);
        }
        let mut position = [NOT_PRESENT; FIELD_COUNT];
        for (i, f) in fields.iter().enumerate() {
            if position[f.index()] != NOT_PRESENT {
                return Err(FormatError::DuplicateField {
                    field: *f,
                    column: i + 1,
                });
            }
            position[f.index()] = i as u8;
        }
        Ok(Format {
            columns: fields.to_vec(),
            kinds: fields.iter().map(|f| f.kind()).collect(),
            position,
        })
    }

    /// The default (version 2) format.
    pub fn default_v2() -> Self {
        Self::new(&DEFAULT_FIELDS).expect("the default fields are distinct")
    }

    /// Parses any spelling of a format: the AWS format string (`${version} ${srcaddr}`), an S3
    /// header line (`version srcaddr`), or names separated by spaces or commas, with hyphens or
    /// underscores.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let bytes = text.as_bytes();
        let names = match name_list(bytes) {
            Ok((_, names)) => names,
            Err(_) => return Err(Self::locate_malformed(bytes)),
        };
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            let column = name.as_ptr() as usize - bytes.as_ptr() as usize + 1;
            match Field::from_name_bytes(name) {
                Some(f) => fields.push((f, column)),
                None => {
                    return Err(FormatError::UnknownField {
                        name: String::from_utf8_lossy(name).into_owned(),
                        column,
                    })
                }
            }
        }
        let mut position = [NOT_PRESENT; FIELD_COUNT];
        for (i, (f, column)) in fields.iter().enumerate() {
            if position[f.index()] != NOT_PRESENT {
                return Err(FormatError::DuplicateField {
                    field: *f,
                    column: *column,
                });
            }
            position[f.index()] = i as u8;
        }
        let columns: Vec<Field> = fields.into_iter().map(|(f, _)| f).collect();
        Ok(Format {
            kinds: columns.iter().map(|f| f.kind()).collect(),
            columns,
            position,
        })
    }

    fn locate_malformed(bytes: &[u8]) -> FormatError {
        let mut rest = bytes;
        // Walk the tokens that do parse to point at the first that does not.
        while let Ok((after, _)) = name_token(rest) {
            if after.len() == rest.len() {
                break;
            }
            rest = after;
        }
        let rest_trimmed = match rest.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(p) => &rest[p..],
            None => &[][..],
        };
        if rest_trimmed.is_empty() {
            return FormatError::Empty;
        }
        let column = bytes.len() - rest_trimmed.len() + 1;
        let end = rest_trimmed
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest_trimmed.len());
        FormatError::Malformed {
            column,
            text: String::from_utf8_lossy(&rest_trimmed[..end]).into_owned(),
        }
    }

    /// Recognises a header line: every token is a field name. Returns `None` for a record.
    pub fn from_header_line(line: &[u8]) -> Option<Self> {
        let first = line.iter().position(|b| !b.is_ascii_whitespace())?;
        // Records never start with a field name; this check keeps the common case cheap.
        if !line[first].is_ascii_lowercase() {
            return None;
        }
        let text = std::str::from_utf8(line).ok()?;
        if text.contains("${") {
            return None;
        }
        let all_names = text
            .split_ascii_whitespace()
            .all(|t| Field::from_name(t).is_some());
        if !all_names {
            return None;
        }
        Format::parse(text).ok()
    }

    /// The fields in column order.
    pub fn fields(&self) -> &[Field] {
        &self.columns
    }

    /// The value type of each column.
    #[inline]
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Never true: a format has at least one field.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The column of a field, if the format has it.
    #[inline]
    pub fn position(&self, field: Field) -> Option<usize> {
        match self.position[field.index()] {
            NOT_PRESENT => None,
            p => Some(p as usize),
        }
    }

    pub fn contains(&self, field: Field) -> bool {
        self.position(field).is_some()
    }

    /// The `version` AWS writes for this format: the highest version among its fields.
    pub fn version(&self) -> u8 {
        self.columns.iter().map(|f| f.version()).max().unwrap_or(2)
    }

    /// The format as AWS's `LogFormat` string: `${version} ${account-id} …`, single spaces,
    /// no trailing space (EC2 rejects one).
    pub fn to_aws_string(&self) -> String {
        let mut s = String::new();
        for (i, f) in self.columns.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str("${");
            s.push_str(f.name());
            s.push('}');
        }
        s
    }

    /// The header line S3 delivery writes: the names separated by single spaces.
    pub fn header_line(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|f| f.name()).collect();
        names.join(" ")
    }
}

impl Default for Format {
    fn default() -> Self {
        Self::default_v2()
    }
}

impl fmt::Debug for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Format({})", self.header_line())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_aws_string())
    }
}

impl std::str::FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_string_round_trips() {
        let f = Format::parse(DEFAULT_FORMAT_STRING).unwrap();
        assert_eq!(f, Format::default_v2());
        assert_eq!(f.to_aws_string(), DEFAULT_FORMAT_STRING);
        assert_eq!(f.version(), 2);
    }

    #[test]
    fn spellings_agree() {
        let a = Format::parse("${version} ${pkt-srcaddr} ${traffic-path}").unwrap();
        let b = Format::parse("version pkt-srcaddr traffic-path").unwrap();
        let c = Format::parse("version,pkt_srcaddr, traffic_path").unwrap();
        let d = Format::parse("  version\tpkt-srcaddr  traffic-path\r\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(
            a.fields(),
            &[Field::Version, Field::PktSrcAddr, Field::TrafficPath]
        );
        assert_eq!(a.version(), 5);
        assert_eq!(a.position(Field::TrafficPath), Some(2));
        assert_eq!(a.position(Field::SrcAddr), None);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            Format::parse("${version} ${srcaddress}"),
            Err(FormatError::UnknownField {
                name: "srcaddress".into(),
                column: 14
            })
        );
        assert_eq!(
            Format::parse("version srcaddr version"),
            Err(FormatError::DuplicateField {
                field: Field::Version,
                column: 17
            })
        );
        assert_eq!(Format::parse(""), Err(FormatError::Empty));
        assert_eq!(Format::parse("   "), Err(FormatError::Empty));
        assert_eq!(
            Format::parse("${version} ${srcaddr"),
            Err(FormatError::Malformed {
                column: 12,
                text: "${srcaddr".into()
            })
        );
        let msg = Format::parse("version bogus").unwrap_err().to_string();
        assert!(msg.contains("`bogus`") && msg.contains("column 9"), "{msg}");
    }

    #[test]
    fn header_lines() {
        let h = Format::from_header_line(b"version account-id interface-id srcaddr\r\n").unwrap();
        assert_eq!(h.len(), 4);
        assert!(Format::from_header_line(b"2 123 eni-1 10.0.0.1").is_none());
        assert!(Format::from_header_line(b"- eni-1 10.0.0.1").is_none());
        assert!(Format::from_header_line(b"bogus line").is_none());
        assert!(Format::from_header_line(b"").is_none());
    }
}
