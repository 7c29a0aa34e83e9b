//! Fuzz target: any text as a format string; a format that parses must print and re-parse
//! to itself in both spellings.
#![no_main]

use flowlog::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(f) = Format::parse(&text) {
        assert_eq!(Format::parse(&f.to_aws_string()).as_ref(), Ok(&f));
        assert_eq!(Format::parse(&f.header_line()).as_ref(), Ok(&f));
    }
});
