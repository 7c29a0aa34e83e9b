//! Parsing one line into a [`Record`] that borrows it, and writing records back out.
//!
//! The line is split on runs of spaces or tabs (AWS's own examples contain double spaces),
//! every token is converted to its field's type, and the first problem found is reported
//! with the field and the byte column it starts at. Nothing here allocates unless the line
//! is bad.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use nom::bytes::complete::{take_till1, take_while};
use nom::{IResult, Parser};

use crate::blanks::{is_blank, token_bounds};
use crate::field::{Field, Kind, FIELD_COUNT};
use crate::format::Format;
use crate::value::{Action, FlowDirection, IpType, LogStatus, TcpFlags, TrafficPath, Value};

/// Timestamps at or above this are milliseconds (1e11 seconds is the year 5138); some
/// delivery paths write milliseconds despite the documentation.
const MILLISECOND_THRESHOLD: u64 = 100_000_000_000;

/// Timestamps at or above this are neither seconds nor milliseconds of any real date (the
/// millisecond reading would be past the year 5138): they are rejected as out of range, so
/// normalisation never has to guess twice.
const TIMESTAMP_LIMIT: u64 = 100_000_000_000_000 - 1;

/// The longest piece of a bad token quoted back in an error message.
const QUOTE_LIMIT: usize = 48;

/// A parsed flow-log record. Text fields borrow the line; every other field is already
/// converted to its type.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    format: &'a Format,
    values: [Value<'a>; FIELD_COUNT],
}

/// What was wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The line ends before the format does.
    TooFewFields { expected: usize, found: usize },
    /// The line has tokens past the last field of the format.
    TooManyFields { expected: usize, found: usize },
    /// A number that does not fit the field (port 65536, protocol 300).
    OutOfRange { text: String, max: u64 },
    /// Not a number where the field needs one.
    InvalidNumber { text: String },
    /// Not an IPv4 or IPv6 address.
    InvalidAddress { text: String },
    /// Not one of the words the field allows.
    InvalidValue {
        text: String,
        expected: &'static str,
    },
    /// A byte sequence that is not UTF-8.
    NonUtf8,
    /// A time no record can carry: before VPC flow logs existed, further in the future than
    /// clocks drift, or a start after the end. Found by the reader, which knows the time.
    ImplausibleTime { text: String, why: String },
}

impl ErrorKind {
    /// A short, stable name for counting bad lines by reason (a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            ErrorKind::TooFewFields { .. } => "too_few_fields",
            ErrorKind::TooManyFields { .. } => "too_many_fields",
            ErrorKind::OutOfRange { .. } => "out_of_range",
            ErrorKind::InvalidNumber { .. } => "invalid_number",
            ErrorKind::InvalidAddress { .. } => "invalid_address",
            ErrorKind::InvalidValue { .. } => "invalid_value",
            ErrorKind::NonUtf8 => "non_utf8",
            ErrorKind::ImplausibleTime { .. } => "implausible_time",
        }
    }

    /// Every reason [`ErrorKind::reason`] can return.
    pub const REASONS: [&'static str; 8] = [
        "too_few_fields",
        "too_many_fields",
        "out_of_range",
        "invalid_number",
        "invalid_address",
        "invalid_value",
        "non_utf8",
        "implausible_time",
    ];
}

/// A line that is not a valid record in its format: which field, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ErrorKind,
    /// The field at fault; for too few fields, the first one missing.
    pub field: Option<Field>,
    /// 1-based byte column where the problem starts.
    pub column: usize,
}

impl ParseError {
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(field), 0) = (self.field, self.column) {
            write!(f, "field `{field}`: ")?;
        } else if let Some(field) = self.field {
            write!(f, "field `{field}` at column {}: ", self.column)?;
        } else {
            write!(f, "column {}: ", self.column)?;
        }
        match &self.kind {
            ErrorKind::TooFewFields { expected, found } => {
                write!(
                    f,
                    "too few fields: the format has {expected}, the line has {found}"
                )
            }
            ErrorKind::TooManyFields { expected, found } => {
                write!(
                    f,
                    "too many fields: the format has {expected}, the line has {found}"
                )
            }
            ErrorKind::OutOfRange { text, max } => {
                write!(f, "`{text}` is out of range (0 to {max})")
            }
            ErrorKind::InvalidNumber { text } => write!(f, "`{text}` is not a number"),
            ErrorKind::InvalidAddress { text } => {
                write!(f, "`{text}` is not an IPv4 or IPv6 address")
            }
            ErrorKind::InvalidValue { text, expected } => {
                write!(f, "`{text}` is not one of {}", expected.trim_end())
            }
            ErrorKind::NonUtf8 => f.write_str("contains a byte that is not UTF-8"),
            ErrorKind::ImplausibleTime { text, why } => write!(f, "`{text}` {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn quote(token: &[u8]) -> String {
    let mut end = token.len().min(QUOTE_LIMIT);
    while end < token.len() && end > 0 && !is_char_boundary(token, end) {
        end -= 1;
    }
    let mut s = String::from_utf8_lossy(&token[..end]).into_owned();
    if end < token.len() {
        s.push('…');
    }
    s
}

fn is_char_boundary(b: &[u8], i: usize) -> bool {
    i >= b.len() || (b[i] as i8) >= -0x40
}

/// Blanks, then one token. A token starting with `#` begins a trailing comment, which
/// AWS's own published examples carry.
#[inline]
fn token(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (input, _) = take_while(is_blank).parse(input)?;
    take_till1(is_blank).parse(input)
}

/// Strips line-ending whitespace (`\r\n`, trailing blanks) from a line.
#[inline]
pub(crate) fn trim_line_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if is_blank(*last) {
            line = rest;
        } else {
            break;
        }
    }
    line
}

#[inline]
fn parse_uint(tok: &[u8], max: u64) -> Result<u64, ErrorKind> {
    // Up to 19 digits cannot overflow a u64, so the common case needs no overflow checks.
    if tok.len() <= 19 {
        let mut n: u64 = 0;
        for &b in tok {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return Err(invalid_number(tok));
            }
            n = n * 10 + d as u64;
        }
        if n > max {
            return Err(ErrorKind::OutOfRange {
                text: quote(tok),
                max,
            });
        }
        return Ok(n);
    }
    parse_long_uint(tok, max)
}

#[cold]
fn parse_long_uint(tok: &[u8], max: u64) -> Result<u64, ErrorKind> {
    let mut n: u64 = 0;
    let mut overflow = false;
    for &b in tok {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(invalid_number(tok));
        }
        match n.checked_mul(10).and_then(|m| m.checked_add(d as u64)) {
            Some(v) => n = v,
            None => overflow = true,
        }
    }
    if overflow || n > max {
        return Err(ErrorKind::OutOfRange {
            text: quote(tok),
            max,
        });
    }
    Ok(n)
}

#[cold]
fn invalid_number(tok: &[u8]) -> ErrorKind {
    if std::str::from_utf8(tok).is_err() {
        ErrorKind::NonUtf8
    } else {
        ErrorKind::InvalidNumber { text: quote(tok) }
    }
}

#[inline]
fn parse_addr(tok: &[u8]) -> Result<IpAddr, ErrorKind> {
    if let Some(v4) = parse_ipv4(tok) {
        return Ok(IpAddr::V4(v4));
    }
    let text = std::str::from_utf8(tok).map_err(|_| ErrorKind::NonUtf8)?;
    text.parse::<IpAddr>()
        .map_err(|_| ErrorKind::InvalidAddress { text: quote(tok) })
}

/// A text token as `&str`. The block scan has already looked at every byte for anything
/// above 0x7F, which is far cheaper than validating UTF-8 token by token.
#[inline(always)]
fn text_of(tok: &[u8], ascii_line: bool) -> Result<&str, ErrorKind> {
    if ascii_line {
        // SAFETY: every byte of the line, and so of this token, is ASCII, which is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(tok) })
    } else {
        std::str::from_utf8(tok).map_err(|_| ErrorKind::NonUtf8)
    }
}

#[cold]
fn invalid_value(tok: &[u8], expected: &'static str) -> ErrorKind {
    if std::str::from_utf8(tok).is_err() {
        ErrorKind::NonUtf8
    } else {
        ErrorKind::InvalidValue {
            text: quote(tok),
            expected,
        }
    }
}

/// Dotted-quad IPv4 as AWS writes it (no leading zeros); `None` hands over to the general
/// parser, which also words the error.
#[inline(always)]
fn parse_ipv4(tok: &[u8]) -> Option<Ipv4Addr> {
    // Octet by octet, each one to three digits: unrolled this way, a digit costs a handful of
    // instructions instead of a pass through a state machine.
    let digit = |i: usize| -> Option<u32> {
        let d = tok.get(i)?.wrapping_sub(b'0');
        (d <= 9).then_some(d as u32)
    };
    let mut bits: u32 = 0;
    let mut i = 0;
    for octet in 0..4 {
        let mut value = digit(i)?;
        i += 1;
        if let Some(d) = digit(i) {
            if value == 0 {
                return None;
            }
            value = value * 10 + d;
            i += 1;
            if let Some(d) = digit(i) {
                value = value * 10 + d;
                i += 1;
                if value > 255 {
                    return None;
                }
            }
        }
        bits = (bits << 8) | value;
        if octet < 3 {
            if tok.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == tok.len()).then(|| Ipv4Addr::from(bits))
}

/// Converts one token and stores it straight into its slot: building the value elsewhere and
/// copying it in costs a store-forwarding stall per field, which dominated the parse time.
#[inline(always)]
fn convert_into<'a>(
    kind: Kind,
    tok: &'a [u8],
    ascii_line: bool,
    slot: &mut Value<'a>,
) -> Result<(), ErrorKind> {
    if tok.len() == 1 && tok[0] == b'-' {
        *slot = Value::Absent;
        return Ok(());
    }
    match kind {
        Kind::Text => *slot = Value::Text(text_of(tok, ascii_line)?),
        Kind::Addr => *slot = Value::Addr(parse_addr(tok)?),
        Kind::Port => *slot = Value::Int(parse_uint(tok, u16::MAX as u64)?),
        Kind::Protocol | Kind::Version | Kind::TcpFlags | Kind::Code => {
            *slot = Value::Int(parse_uint(tok, u8::MAX as u64)?)
        }
        Kind::Count => *slot = Value::Int(parse_uint(tok, u64::MAX)?),
        Kind::Timestamp => {
            let t = parse_uint(tok, TIMESTAMP_LIMIT)?;
            *slot = Value::Int(if t >= MILLISECOND_THRESHOLD {
                t / 1000
            } else {
                t
            })
        }
        Kind::Action => {
            *slot = Value::Action(
                Action::from_bytes(tok).ok_or_else(|| invalid_value(tok, Action::EXPECTED))?,
            )
        }
        Kind::LogStatus => {
            *slot = Value::LogStatus(
                LogStatus::from_bytes(tok)
                    .ok_or_else(|| invalid_value(tok, LogStatus::EXPECTED))?,
            )
        }
        Kind::IpType => {
            *slot = Value::IpType(
                IpType::from_bytes(tok).ok_or_else(|| invalid_value(tok, IpType::EXPECTED))?,
            )
        }
        Kind::FlowDirection => {
            *slot = Value::FlowDirection(
                FlowDirection::from_bytes(tok)
                    .ok_or_else(|| invalid_value(tok, FlowDirection::EXPECTED))?,
            )
        }
        Kind::TrafficPath => {
            let code = parse_uint(tok, 8)?;
            *slot = Value::TrafficPath(TrafficPath::from_code(code as u8).ok_or_else(|| {
                ErrorKind::OutOfRange {
                    text: quote(tok),
                    max: 8,
                }
            })?)
        }
    }
    Ok(())
}

/// A field's value from a cell that already stands alone (a string column of a columnar
/// file): converted and checked as the same token of a line would be. `-` and an empty
/// cell are absent.
#[inline]
pub fn value_of_text(kind: Kind, text: &str) -> Result<Value<'_>, ErrorKind> {
    if text.is_empty() {
        return Ok(Value::Absent);
    }
    let mut slot = Value::Absent;
    // A space would split the field in a line; here it is part of the cell's text.
    convert_into(kind, text.as_bytes(), true, &mut slot)?;
    Ok(slot)
}

/// A field's value from an integer cell (an integer column of a columnar file), checked
/// against the field's range as the same number in a line would be.
#[inline]
pub fn value_of_int(kind: Kind, n: i64) -> Result<Value<'static>, ErrorKind> {
    let Ok(n) = u64::try_from(n) else {
        return Err(ErrorKind::InvalidNumber {
            text: n.to_string(),
        });
    };
    let out_of_range = |max: u64| ErrorKind::OutOfRange {
        text: n.to_string(),
        max,
    };
    let within = |max: u64| {
        if n > max {
            Err(out_of_range(max))
        } else {
            Ok(Value::Int(n))
        }
    };
    match kind {
        Kind::Port => within(u16::MAX as u64),
        Kind::Protocol | Kind::Version | Kind::TcpFlags | Kind::Code => within(u8::MAX as u64),
        Kind::Count => Ok(Value::Int(n)),
        Kind::Timestamp => {
            if n > TIMESTAMP_LIMIT {
                return Err(out_of_range(TIMESTAMP_LIMIT));
            }
            Ok(Value::Int(if n >= MILLISECOND_THRESHOLD {
                n / 1000
            } else {
                n
            }))
        }
        Kind::TrafficPath => u8::try_from(n)
            .ok()
            .and_then(TrafficPath::from_code)
            .map(Value::TrafficPath)
            .ok_or_else(|| out_of_range(8)),
        // Text, an address or a word: a number is none of them. (A text field that a
        // writer stored as a number is the caller's to turn into text, which it must own.)
        Kind::Text
        | Kind::Addr
        | Kind::Action
        | Kind::LogStatus
        | Kind::IpType
        | Kind::FlowDirection => Err(ErrorKind::InvalidValue {
            text: n.to_string(),
            expected: "text, not a number",
        }),
    }
}

impl<'a> Record<'a> {
    /// A record of the given format with every field absent; fill it with
    /// [`Record::parse_into`] to reuse one record for many lines, or with
    /// [`Record::fill`] from typed cells.
    pub fn empty(format: &'a Format) -> Self {
        Record {
            format,
            values: [Value::Absent; FIELD_COUNT],
        }
    }

    /// Parses one line (with or without its line ending) in `format`.
    #[inline]
    pub fn parse(format: &'a Format, line: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Record::empty(format);
        r.parse_into(line)?;
        Ok(r)
    }

    /// Parses `line` into this record, overwriting every column of its format. On error the
    /// record's contents are unspecified.
    #[inline]
    pub fn parse_into(&mut self, line: &'a [u8]) -> Result<(), ParseError> {
        let format = self.format;
        let kinds = format.kinds();
        let fields = kinds.len();
        let line = trim_line_end(line);
        // One token more than the format has, to tell a trailing comment from a stray field.
        let mut bounds = [0usize; 2 * (FIELD_COUNT + 1)];
        let (written, ascii) = token_bounds(line, &mut bounds[..2 * (fields + 1)]);
        let tokens = written / 2;
        let too_few = |col: usize| ParseError {
            kind: ErrorKind::TooFewFields {
                expected: fields,
                found: col,
            },
            field: format.fields().get(col).copied(),
            column: line.len() + 1,
        };
        for (col, ((&kind, slot), span)) in kinds
            .iter()
            .zip(self.values.iter_mut())
            .zip(bounds.chunks_exact(2))
            .enumerate()
        {
            if col == tokens {
                return Err(too_few(col));
            }
            let tok = &line[span[0]..span[1]];
            if tok[0] == b'#' {
                return Err(too_few(col));
            }
            convert_into(kind, tok, ascii, slot).map_err(|kind| ParseError {
                kind,
                field: format.fields().get(col).copied(),
                column: span[0] + 1,
            })?;
        }
        if tokens > fields {
            let start = bounds[2 * fields];
            if line[start] != b'#' {
                return Err(ParseError {
                    kind: ErrorKind::TooManyFields {
                        expected: fields,
                        found: fields + count_tokens(&line[start..]),
                    },
                    field: None,
                    column: start + 1,
                });
            }
        }
        Ok(())
    }

    /// Takes its values, in column order, from typed cells (made with [`value_of_text`] or
    /// [`value_of_int`]): one record reused for every row of a columnar batch. Values past
    /// the format's width are ignored; columns past `values` keep what they held.
    #[inline]
    pub fn fill(&mut self, values: &[Value<'a>]) {
        let n = values.len().min(self.format.len());
        self.values[..n].copy_from_slice(&values[..n]);
    }

    /// The format the record was parsed in.
    pub fn format(&self) -> &'a Format {
        self.format
    }

    /// A field's value; [`Value::Absent`] for `-` and for fields the format lacks.
    #[inline]
    pub fn get(&self, field: Field) -> Value<'a> {
        match self.format.position(field) {
            Some(p) => self.values[p],
            None => Value::Absent,
        }
    }

    /// The values in column order.
    pub fn values(&self) -> &[Value<'a>] {
        &self.values[..self.format.len()]
    }

    /// A text field's value.
    pub fn text(&self, field: Field) -> Option<&'a str> {
        match self.get(field) {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A numeric field's value.
    pub fn int(&self, field: Field) -> Option<u64> {
        match self.get(field) {
            Value::Int(n) => Some(n),
            Value::TrafficPath(p) => Some(p.code() as u64),
            _ => None,
        }
    }

    /// An address field's value.
    pub fn addr(&self, field: Field) -> Option<IpAddr> {
        match self.get(field) {
            Value::Addr(a) => Some(a),
            _ => None,
        }
    }

    pub fn version(&self) -> Option<u8> {
        self.int(Field::Version).map(|v| v as u8)
    }
    /// `account-id` as text: `unknown` and leading zeros are real values.
    pub fn account_id(&self) -> Option<&'a str> {
        self.text(Field::AccountId)
    }
    pub fn interface_id(&self) -> Option<&'a str> {
        self.text(Field::InterfaceId)
    }
    pub fn srcaddr(&self) -> Option<IpAddr> {
        self.addr(Field::SrcAddr)
    }
    pub fn dstaddr(&self) -> Option<IpAddr> {
        self.addr(Field::DstAddr)
    }
    pub fn srcport(&self) -> Option<u16> {
        self.int(Field::SrcPort).map(|v| v as u16)
    }
    pub fn dstport(&self) -> Option<u16> {
        self.int(Field::DstPort).map(|v| v as u16)
    }
    pub fn protocol(&self) -> Option<u8> {
        self.int(Field::Protocol).map(|v| v as u8)
    }
    pub fn packets(&self) -> Option<u64> {
        self.int(Field::Packets)
    }
    pub fn bytes(&self) -> Option<u64> {
        self.int(Field::Bytes)
    }
    /// Window start, Unix seconds.
    pub fn start(&self) -> Option<u64> {
        self.int(Field::Start)
    }
    /// Window end, Unix seconds.
    pub fn end(&self) -> Option<u64> {
        self.int(Field::End)
    }
    pub fn action(&self) -> Option<Action> {
        match self.get(Field::Action) {
            Value::Action(a) => Some(a),
            _ => None,
        }
    }
    pub fn log_status(&self) -> Option<LogStatus> {
        match self.get(Field::LogStatus) {
            Value::LogStatus(s) => Some(s),
            _ => None,
        }
    }
    pub fn vpc_id(&self) -> Option<&'a str> {
        self.text(Field::VpcId)
    }
    pub fn subnet_id(&self) -> Option<&'a str> {
        self.text(Field::SubnetId)
    }
    pub fn instance_id(&self) -> Option<&'a str> {
        self.text(Field::InstanceId)
    }
    pub fn tcp_flags(&self) -> Option<TcpFlags> {
        self.int(Field::TcpFlags).map(|v| TcpFlags(v as u8))
    }
    /// The `type` field.
    pub fn ip_type(&self) -> Option<IpType> {
        match self.get(Field::Type) {
            Value::IpType(t) => Some(t),
            _ => None,
        }
    }
    pub fn pkt_srcaddr(&self) -> Option<IpAddr> {
        self.addr(Field::PktSrcAddr)
    }
    pub fn pkt_dstaddr(&self) -> Option<IpAddr> {
        self.addr(Field::PktDstAddr)
    }
    pub fn region(&self) -> Option<&'a str> {
        self.text(Field::Region)
    }
    pub fn az_id(&self) -> Option<&'a str> {
        self.text(Field::AzId)
    }
    pub fn pkt_src_aws_service(&self) -> Option<&'a str> {
        self.text(Field::PktSrcAwsService)
    }
    pub fn pkt_dst_aws_service(&self) -> Option<&'a str> {
        self.text(Field::PktDstAwsService)
    }
    pub fn flow_direction(&self) -> Option<FlowDirection> {
        match self.get(Field::FlowDirection) {
            Value::FlowDirection(d) => Some(d),
            _ => None,
        }
    }
    pub fn traffic_path(&self) -> Option<TrafficPath> {
        match self.get(Field::TrafficPath) {
            Value::TrafficPath(p) => Some(p),
            _ => None,
        }
    }
    pub fn reject_reason(&self) -> Option<&'a str> {
        self.text(Field::RejectReason)
    }
    pub fn encryption_status(&self) -> Option<u8> {
        self.int(Field::EncryptionStatus).map(|v| v as u8)
    }
    pub fn interface_type(&self) -> Option<&'a str> {
        self.text(Field::InterfaceType)
    }

    /// Appends the record as a line in `format` (no line ending). Fields the record does not
    /// have are written as `-`; a `version` column gets the record's own version.
    pub fn write_line(&self, format: &Format, out: &mut String) {
        for (i, &field) in format.fields().iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            // Writing into a String cannot fail.
            let _ = write!(out, "{}", self.get(field));
        }
    }

    /// The record as a line in its own format.
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(128);
        self.write_line(self.format, &mut s);
        s
    }
}

/// Records are equal when every field has the same value, whatever their formats.
impl PartialEq for Record<'_> {
    fn eq(&self, other: &Self) -> bool {
        Field::ALL.iter().all(|&f| self.get(f) == other.get(f))
    }
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (field, value) in self.format.fields().iter().zip(self.values()) {
            m.entry(&field.name(), value);
        }
        m.finish()
    }
}

fn count_tokens(mut rest: &[u8]) -> usize {
    let mut n = 0;
    while let Ok((after, tok)) = token(rest) {
        if tok[0] == b'#' {
            break;
        }
        n += 1;
        rest = after;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv6Addr;

    const V5_LINE: &str = "5 64111117617 eni-069xxxxxb7a490 89.160.20.156 10.200.0.0 50041 33004 17 52 1 1616729292 1616729349 REJECT OK vpc-09676f97xxxxxb8a7 subnet-02d645xxxxxxxdbc0 i-0axxxxxx1ad77 1 IPv4 89.160.20.156 10.200.0.80 us-east-1 use1-az5 wavelength fake-id AMAZON CLOUDFRONT ingress 1";
    const V5_FORMAT: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr region az-id sublocation-type sublocation-id pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path";

    fn v2() -> Format {
        Format::default_v2()
    }

    #[test]
    fn default_record_typed() {
        let f = v2();
        let line = b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK\n";
        let r = Record::parse(&f, line).unwrap();
        assert_eq!(r.version(), Some(2));
        assert_eq!(r.account_id(), Some("123456789010"));
        assert_eq!(r.interface_id(), Some("eni-1235b8ca123456789"));
        assert_eq!(
            r.srcaddr(),
            Some(IpAddr::V4(Ipv4Addr::new(172, 31, 16, 139)))
        );
        assert_eq!(
            r.dstaddr(),
            Some(IpAddr::V4(Ipv4Addr::new(172, 31, 16, 21)))
        );
        assert_eq!(r.srcport(), Some(20641));
        assert_eq!(r.dstport(), Some(22));
        assert_eq!(r.protocol(), Some(6));
        assert_eq!(r.packets(), Some(20));
        assert_eq!(r.bytes(), Some(4249));
        assert_eq!(r.start(), Some(1418530010));
        assert_eq!(r.end(), Some(1418530070));
        assert_eq!(r.action(), Some(Action::Accept));
        assert_eq!(r.log_status(), Some(LogStatus::Ok));
        assert_eq!(r.pkt_srcaddr(), None);
    }

    #[test]
    fn v5_record_typed() {
        let f = Format::parse(V5_FORMAT).unwrap();
        let r = Record::parse(&f, V5_LINE.as_bytes()).unwrap();
        assert_eq!(r.account_id(), Some("64111117617"));
        assert_eq!(r.tcp_flags(), Some(TcpFlags(1)));
        assert!(r.tcp_flags().unwrap().fin());
        assert_eq!(r.ip_type(), Some(IpType::IPv4));
        assert_eq!(r.pkt_dstaddr(), Some("10.200.0.80".parse().unwrap()));
        assert_eq!(r.az_id(), Some("use1-az5"));
        assert_eq!(r.text(Field::SublocationType), Some("wavelength"));
        assert_eq!(r.pkt_src_aws_service(), Some("AMAZON"));
        assert_eq!(r.pkt_dst_aws_service(), Some("CLOUDFRONT"));
        assert_eq!(r.flow_direction(), Some(FlowDirection::Ingress));
        assert_eq!(r.traffic_path(), Some(TrafficPath::SameVpc));
        assert_eq!(r.to_line(), V5_LINE);
    }

    #[test]
    fn whitespace_and_comments_tolerated() {
        let f = v2();
        let line =
            b"  2\t123456789010  eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK  # note\r\n";
        let r = Record::parse(&f, line).unwrap();
        assert_eq!(r.srcport(), Some(1));
        assert_eq!(r.log_status(), Some(LogStatus::Ok));
    }

    #[test]
    fn nodata_is_absent() {
        let f = v2();
        let r = Record::parse(
            &f,
            b"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
        )
        .unwrap();
        assert_eq!(r.srcaddr(), None);
        assert_eq!(r.bytes(), None);
        assert_eq!(r.action(), None);
        assert_eq!(r.log_status(), Some(LogStatus::NoData));
        assert_eq!(r.start(), Some(1431280876));
    }

    #[test]
    fn milliseconds_normalised() {
        let f = v2();
        let r = Record::parse(
            &f,
            b"2 123456789010 eni-4b118871 - - - - - - - 1512564058000 1512564059000 - SKIPDATA",
        )
        .unwrap();
        assert_eq!(r.start(), Some(1512564058));
        assert_eq!(r.end(), Some(1512564059));
    }

    #[test]
    fn line_endings_inside_a_line_separate_fields() {
        let f = Format::parse("srcport dstport").unwrap();
        let r = Record::parse(&f, b"1\r2 #c").unwrap();
        assert_eq!((r.srcport(), r.dstport()), (Some(1), Some(2)));
        let f = Format::parse("srcport interface-id").unwrap();
        let r = Record::parse(&f, b"1 eni-0\n #c").unwrap();
        assert_eq!(r.interface_id(), Some("eni-0"));
    }

    #[test]
    fn implausible_timestamps_rejected() {
        let f = v2();
        let r = Record::parse(&f, b"2 1 eni-1 - - - - - - - 99999999999999 1 - NODATA").unwrap();
        assert_eq!(r.start(), Some(99_999_999_999));
        let e =
            Record::parse(&f, b"2 1 eni-1 - - - - - - - 100000000000000 1 - NODATA").unwrap_err();
        assert_eq!((e.field, e.reason()), (Some(Field::Start), "out_of_range"));
        // Found by fuzzing: a value that stayed in the millisecond range after one division.
        let e =
            Record::parse(&f, b"2 1 eni-1 - - - - - - - 1 800000000050091 - NODATA").unwrap_err();
        assert_eq!((e.field, e.reason()), (Some(Field::End), "out_of_range"));
    }

    #[test]
    fn ipv6() {
        let f = v2();
        let r = Record::parse(
            &f,
            b"2 1 eni-1 2001:db8::1 ::ffff:10.0.0.1 1 2 6 3 4 5 6 ACCEPT OK",
        )
        .unwrap();
        assert_eq!(
            r.srcaddr(),
            Some(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()))
        );
        assert_eq!(r.dstaddr(), Some("::ffff:10.0.0.1".parse().unwrap()));
    }

    fn err(line: &str) -> ParseError {
        Record::parse(&v2(), line.as_bytes()).unwrap_err()
    }

    #[test]
    fn errors_name_field_and_column() {
        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 65536 2 6 3 4 5 6 ACCEPT OK");
        assert_eq!(e.field, Some(Field::SrcPort));
        assert_eq!(e.column, 29);
        assert_eq!(
            e.kind,
            ErrorKind::OutOfRange {
                text: "65536".into(),
                max: 65535
            }
        );
        assert_eq!(
            e.to_string(),
            "field `srcport` at column 29: `65536` is out of range (0 to 65535)"
        );

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 300 3 4 5 6 ACCEPT OK");
        assert_eq!(
            (e.field, e.reason()),
            (Some(Field::Protocol), "out_of_range")
        );

        let e = err("2 1 eni-1 10.0.0.256 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK");
        assert_eq!(
            (e.field, e.column, e.reason()),
            (Some(Field::SrcAddr), 11, "invalid_address")
        );

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT");
        assert_eq!(
            e.kind,
            ErrorKind::TooFewFields {
                expected: 14,
                found: 13
            }
        );
        assert_eq!(e.field, Some(Field::LogStatus));

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK extra more");
        assert_eq!(
            e.kind,
            ErrorKind::TooManyFields {
                expected: 14,
                found: 16
            }
        );
        assert_eq!(e.column, 53);

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 x4 5 6 ACCEPT OK");
        assert_eq!(
            (e.field, e.reason()),
            (Some(Field::Bytes), "invalid_number")
        );

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ALLOW OK");
        assert_eq!(
            (e.field, e.reason()),
            (Some(Field::Action), "invalid_value")
        );
        assert!(e.to_string().contains("ACCEPT REJECT"), "{e}");

        let e = err("2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 99999999999999999999999 5 6 ACCEPT OK");
        assert_eq!((e.field, e.reason()), (Some(Field::Bytes), "out_of_range"));
    }

    #[test]
    fn non_utf8_named() {
        let f = v2();
        let mut line = b"2 1 eni-1".to_vec();
        line.extend_from_slice(&[0xd0]);
        line.extend_from_slice(b" 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK");
        let e = Record::parse(&f, &line).unwrap_err();
        assert_eq!(
            (e.field, e.column, e.reason()),
            (Some(Field::InterfaceId), 5, "non_utf8")
        );
        // Valid UTF-8 that is not ASCII (a Cyrillic letter in an ID) is text like any other.
        let line = "2 1 eni-1б 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK";
        let r = Record::parse(&f, line.as_bytes()).unwrap();
        assert_eq!(r.interface_id(), Some("eni-1б"));
    }

    #[test]
    fn writes_in_another_format() {
        let src = Format::parse(V5_FORMAT).unwrap();
        let r = Record::parse(&src, V5_LINE.as_bytes()).unwrap();
        let dst = Format::parse("pkt-dstaddr srcport instance-id ecs-task-id").unwrap();
        let mut out = String::new();
        r.write_line(&dst, &mut out);
        assert_eq!(out, "10.200.0.80 50041 i-0axxxxxx1ad77 -");
    }

    proptest::proptest! {
        /// The unrolled IPv4 reader accepts exactly what the standard library accepts (dotted
        /// quads without leading zeros) and reads the same address.
        #[test]
        fn ipv4_agrees_with_std(
            tok in proptest::collection::vec(proptest::sample::select(vec![
                b'0', b'1', b'2', b'5', b'6', b'9', b'.', b':', b'a', b'-',
            ]), 0..20),
        ) {
            let expected = std::str::from_utf8(&tok).unwrap().parse::<Ipv4Addr>().ok();
            proptest::prop_assert_eq!(parse_ipv4(&tok), expected);
        }

        #[test]
        fn ipv4_reads_every_address(bits in proptest::prelude::any::<u32>()) {
            let addr = Ipv4Addr::from(bits);
            proptest::prop_assert_eq!(parse_ipv4(addr.to_string().as_bytes()), Some(addr));
        }
    }

    #[test]
    fn leading_zero_octets_rejected() {
        assert_eq!(parse_ipv4(b"10.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(parse_ipv4(b"0.0.0.0"), Some(Ipv4Addr::new(0, 0, 0, 0)));
        assert_eq!(parse_ipv4(b"010.0.0.1"), None);
        assert_eq!(parse_ipv4(b"1.2.3"), None);
        assert_eq!(parse_ipv4(b"1.2.3.4.5"), None);
        assert_eq!(parse_ipv4(b"1..3.4"), None);
        assert_eq!(parse_ipv4(b"1.2.3.256"), None);
    }
}
