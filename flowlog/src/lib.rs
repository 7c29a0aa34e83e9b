//! `flowlog`: a fast, strict, zero-copy parser for AWS VPC flow-log records.
//!
//! Every field of versions 2 to 11 is known ([`Field`]); the record format is data
//! ([`Format`]), built from the AWS format string, an S3 header line or a list of names.
//! Parsing a line yields a [`Record`] that borrows it, with every field already converted to
//! its type, or a [`ParseError`] naming the field, the byte column and the reason. No input
//! makes it panic.
//!
//! ```
//! use flowlog::{Format, Record, Action};
//! let format = Format::default_v2();
//! let line = b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK";
//! let record = Record::parse(&format, line).unwrap();
//! assert_eq!(record.dstport(), Some(22));
//! assert_eq!(record.action(), Some(Action::Accept));
//! ```

mod blanks;
mod decode;
mod field;
mod format;
mod record;
#[cfg(feature = "serde")]
mod serialize;
mod value;

pub use decode::{line_kind, Decoder, Line, LineKind};
pub use field::{Field, Kind, FIELD_COUNT};
pub use format::{Format, FormatError, DEFAULT_FIELDS, DEFAULT_FORMAT_STRING};
pub use record::{value_of_int, value_of_text, ErrorKind, ParseError, Record};
pub use value::{Action, FlowDirection, IpType, LogStatus, TcpFlags, TrafficPath, Value};
