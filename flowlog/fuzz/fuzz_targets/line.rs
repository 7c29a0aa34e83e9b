//! Fuzz target: any bytes as a line in the widest format, in the default format and through
//! a header-following decoder. A record that parses must write back to a line that parses
//! to an equal record.
#![no_main]

use flowlog::{Decoder, Field, Format, Line, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wide = Format::new(Field::ALL).expect("distinct fields");
    for format in [&wide, &Format::default_v2()] {
        if let Ok(r) = Record::parse(format, data) {
            let line = r.to_line();
            let again = Record::parse(format, line.as_bytes()).expect("a written record parses");
            assert_eq!(again, r);
        }
    }
    let mut decoder = Decoder::following_headers(Format::default_v2());
    for line in data.split(|&b| b == b'\n') {
        if let Ok(Line::Record(r)) = decoder.decode(line) {
            let _ = serde_json::to_string(&r);
        }
    }
});
