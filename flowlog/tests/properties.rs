//! Property tests: any record in any format survives a write and a re-parse, in its own
//! format and in another; no input makes the parser panic.

use std::net::IpAddr;

use flowlog::{
    Action, Decoder, Field, FlowDirection, Format, IpType, Kind, LogStatus, Record, TrafficPath,
    Value,
};
use proptest::prelude::*;
use proptest::sample::subsequence;

fn text() -> impl Strategy<Value = String> {
    // IDs, ARNs and tags: no blanks, not `-`, not starting a comment; some non-ASCII.
    "[A-Za-z0-9:/_.@=+][A-Za-z0-9:/_.@=+\\-é]{0,40}".prop_filter("not absent", |s| s != "-")
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn value_for(kind: Kind) -> BoxedStrategy<Option<OwnedValue>> {
    let present: BoxedStrategy<OwnedValue> = match kind {
        Kind::Text => text().prop_map(OwnedValue::Text).boxed(),
        Kind::Addr => addr().prop_map(OwnedValue::Addr).boxed(),
        Kind::Port => any::<u16>().prop_map(|v| OwnedValue::Int(v as u64)).boxed(),
        Kind::Protocol | Kind::Version | Kind::TcpFlags | Kind::Code => {
            any::<u8>().prop_map(|v| OwnedValue::Int(v as u64)).boxed()
        }
        Kind::Count => any::<u64>().prop_map(OwnedValue::Int).boxed(),
        // Seconds only: millisecond inputs are normalised, so they do not round-trip.
        Kind::Timestamp => (0u64..100_000_000_000).prop_map(OwnedValue::Int).boxed(),
        Kind::Action => prop_oneof![Just(Action::Accept), Just(Action::Reject)]
            .prop_map(OwnedValue::Action)
            .boxed(),
        Kind::LogStatus => prop_oneof![
            Just(LogStatus::Ok),
            Just(LogStatus::NoData),
            Just(LogStatus::SkipData)
        ]
        .prop_map(OwnedValue::LogStatus)
        .boxed(),
        Kind::IpType => prop_oneof![Just(IpType::IPv4), Just(IpType::IPv6), Just(IpType::Efa)]
            .prop_map(OwnedValue::IpType)
            .boxed(),
        Kind::FlowDirection => {
            prop_oneof![Just(FlowDirection::Ingress), Just(FlowDirection::Egress)]
                .prop_map(OwnedValue::FlowDirection)
                .boxed()
        }
        Kind::TrafficPath => (1u8..=8)
            .prop_map(|c| OwnedValue::TrafficPath(TrafficPath::from_code(c).unwrap()))
            .boxed(),
    };
    prop_oneof![1 => Just(None), 4 => present.prop_map(Some)].boxed()
}

#[derive(Clone, Debug, PartialEq)]
enum OwnedValue {
    Text(String),
    Addr(IpAddr),
    Int(u64),
    Action(Action),
    LogStatus(LogStatus),
    IpType(IpType),
    FlowDirection(FlowDirection),
    TrafficPath(TrafficPath),
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Text(s) => Value::Text(s),
            OwnedValue::Addr(a) => Value::Addr(*a),
            OwnedValue::Int(n) => Value::Int(*n),
            OwnedValue::Action(a) => Value::Action(*a),
            OwnedValue::LogStatus(s) => Value::LogStatus(*s),
            OwnedValue::IpType(t) => Value::IpType(*t),
            OwnedValue::FlowDirection(d) => Value::FlowDirection(*d),
            OwnedValue::TrafficPath(p) => Value::TrafficPath(*p),
        }
    }
}

/// A random format (a shuffled subset of every field) and a value for each of its columns.
fn format_and_values() -> impl Strategy<Value = (Vec<Field>, Vec<Option<OwnedValue>>)> {
    subsequence(Field::ALL.to_vec(), 1..=Field::ALL.len())
        .prop_shuffle()
        .prop_flat_map(|fields| {
            let values: Vec<_> = fields.iter().map(|f| value_for(f.kind())).collect();
            (Just(fields), values)
        })
}

fn write_line(values: &[Option<OwnedValue>], sep: &str) -> String {
    values
        .iter()
        .map(|v| {
            v.as_ref()
                .map_or("-".to_string(), |v| v.as_value().to_string())
        })
        .collect::<Vec<_>>()
        .join(sep)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn written_records_parse_back_equal((fields, values) in format_and_values(), sep in "[ \t]{1,3}") {
        let format = Format::new(&fields).unwrap();
        let line = write_line(&values, &sep);
        let record = Record::parse(&format, line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        for (field, expected) in fields.iter().zip(&values) {
            let want = expected.as_ref().map_or(Value::Absent, |v| v.as_value());
            prop_assert_eq!(record.get(*field), want, "field {}", field);
        }
        // Written back in its own format it is the canonical single-spaced line.
        prop_assert_eq!(record.to_line(), write_line(&values, " "));
    }

    #[test]
    fn records_convert_between_formats((fields, values) in format_and_values(), other in subsequence(Field::ALL.to_vec(), 1..=Field::ALL.len()).prop_shuffle()) {
        let format = Format::new(&fields).unwrap();
        let line = write_line(&values, " ");
        let record = Record::parse(&format, line.as_bytes()).unwrap();
        // Through a format that has every field, nothing is lost.
        let all = Format::new(Field::ALL).unwrap();
        let mut wide = String::new();
        record.write_line(&all, &mut wide);
        let back = Record::parse(&all, wide.as_bytes()).unwrap();
        prop_assert_eq!(back, record);
        // Through any other format, exactly its fields survive.
        let narrow_format = Format::new(&other).unwrap();
        let mut narrow = String::new();
        record.write_line(&narrow_format, &mut narrow);
        let projected = Record::parse(&narrow_format, narrow.as_bytes()).unwrap();
        for f in Field::ALL {
            let want = if other.contains(f) { record.get(*f) } else { Value::Absent };
            prop_assert_eq!(projected.get(*f), want);
        }
    }

    #[test]
    fn format_strings_round_trip(fields in subsequence(Field::ALL.to_vec(), 1..=Field::ALL.len()).prop_shuffle()) {
        let format = Format::new(&fields).unwrap();
        prop_assert_eq!(Format::parse(&format.to_aws_string()).unwrap(), format.clone());
        prop_assert_eq!(Format::parse(&format.header_line()).unwrap(), format.clone());
        prop_assert_eq!(Format::from_header_line(format.header_line().as_bytes()), Some(format.clone()));
        prop_assert_eq!(format.version(), fields.iter().map(|f| f.version()).max().unwrap());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let format = Format::new(Field::ALL).unwrap();
        let _ = Record::parse(&format, &bytes);
        let _ = Record::parse(&Format::default_v2(), &bytes);
        let mut decoder = Decoder::following_headers(Format::default_v2());
        let _ = decoder.decode(&bytes);
        let _ = Format::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mangled_lines_never_panic((fields, values) in format_and_values(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
        let format = Format::new(&fields).unwrap();
        let mut line = write_line(&values, " ").into_bytes();
        let i = cut.index(line.len().max(1)).min(line.len());
        line.insert(i, junk);
        match Record::parse(&format, &line) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.column >= 1 && e.column <= line.len() + 1, "{e}"),
        }
    }
}

#[test]
fn json_uses_aws_names_and_types() {
    let format =
        Format::parse("version account-id srcaddr dstport bytes action traffic-path log-status")
            .unwrap();
    let r = Record::parse(&format, b"5 000123 10.0.0.1 443 99 ACCEPT 8 -").unwrap();
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"version": 5, "account-id": "000123", "srcaddr": "10.0.0.1",
            "dstport": 443, "bytes": 99, "action": "ACCEPT", "traffic-path": 8})
    );
}
