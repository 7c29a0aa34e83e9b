//! Per-record parse cost: the 14-field default record and the 29-field v5 record, every field
//! converted to its type. Target: at most 150 ns for the 29-field record on a 2-core machine.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowlog::{Format, Record};

const V2_LINE: &[u8] = b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK";
const V5_LINE: &[u8] = b"5 64111117617 eni-069xxxxxb7a490 89.160.20.156 10.200.0.0 50041 33004 17 52 1 1616729292 1616729349 REJECT OK vpc-09676f97xxxxxb8a7 subnet-02d645xxxxxxxdbc0 i-0axxxxxx1ad77 1 IPv4 89.160.20.156 10.200.0.80 us-east-1 use1-az5 wavelength fake-id AMAZON CLOUDFRONT ingress 1";
const V5_FORMAT: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr region az-id sublocation-type sublocation-id pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path";

fn bench(c: &mut Criterion) {
    let v2 = Format::default_v2();
    let v5 = Format::parse(V5_FORMAT).expect("v5 format");
    let mut group = c.benchmark_group("parse");
    for (name, format, line) in [
        ("v2_14_fields", &v2, V2_LINE),
        ("v5_29_fields", &v5, V5_LINE),
    ] {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(format!("{name}/parse"), |b| {
            b.iter(|| {
                let r = Record::parse(format, black_box(line)).expect("valid line");
                black_box(r.bytes());
            })
        });
        group.bench_function(format!("{name}/parse_into"), |b| {
            let mut r = Record::empty(format);
            b.iter(|| {
                r.parse_into(black_box(line)).expect("valid line");
                black_box(r.bytes());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, baseline);
criterion_main!(benches);

/// The floor the target is set against: split on whitespace and parse what looks numeric,
/// converting nothing else. Measured on the same machine in the same run for calibration.
fn baseline(c: &mut Criterion) {
    c.bench_function("baseline/v5_29_fields/split_and_parse_integers", |b| {
        b.iter(|| {
            let text = std::str::from_utf8(black_box(V5_LINE)).expect("ascii");
            let mut ints = [0i64; 29];
            let mut n = 0;
            for (i, tok) in text.split_ascii_whitespace().enumerate() {
                if let Ok(v) = tok.parse::<i64>() {
                    ints[i] = v;
                    n += 1;
                }
            }
            black_box((ints, n));
        })
    });
}
