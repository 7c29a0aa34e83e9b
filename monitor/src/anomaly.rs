//! Behavioural rules: they learn what normal egress looks like, per workload and across the
//! fleet, and flag what departs from it: a new remote port, unusual volume to one host, uploads
//! to never-seen destinations, slow drips, beacons, scans and sweeps. Each keeps its memory in
//! bounded tables, works in event time (records arrive late and out of order), and can save and
//! restore what it learnt so a restart does not start the learning over.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedMap;
use crate::classify::{Flow, Path};
use crate::config::{
    BeaconingRule, NewRemotePortRule, PortScanRule, RareDestinationRule, SlowDripRule,
    TrafficVolumeRule,
};
use crate::detect::{proto_name, Detector, Evidence, Finding, Severity};

fn encode<T: Serialize>(state: &T) -> Option<Vec<u8>> {
    postcard::to_stdvec(state).ok()
}

/// A rule's state as saved in a snapshot. Table limits come from the configuration, not the
/// snapshot, so a restart with a changed `state-entries` takes effect at once.
trait Snapshot: Serialize + for<'de> Deserialize<'de> {
    /// Takes over the configured limits of `configured`, the state the rule was built with;
    /// an error when the saved state cannot serve under this configuration.
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String>;
}

/// Replaces `state` with the one saved in `bytes`, under the limits `state` was configured with.
fn restore<T: Snapshot>(rule: &str, state: &mut T, bytes: &[u8]) -> Result<(), String> {
    let mut saved: T =
        postcard::from_bytes(bytes).map_err(|e| format!("saved state of rule {rule}: {e}"))?;
    saved
        .adopt_limits(state)
        .map_err(|e| format!("saved state of rule {rule}: {e}"))?;
    *state = saved;
    Ok(())
}

/// State tables key on 64-bit digests of addresses instead of the addresses (8 bytes instead
/// of 17 per address): a third of the memory, faster hashing, and with 2^64 values a collision
/// among even millions of keys is vanishingly unlikely. Findings take their addresses from the
/// flow at hand, so nothing needs the address back.
fn key_of(ip: IpAddr) -> u64 {
    address_hash(ip, 0x0123_4567_89ab_cdef)
}

/// The network an address is judged with for popularity and novelty: its /24 (IPv4) or /48
/// (IPv6). Storage services and CDNs answer from whichever address of such a network they
/// pick, so a fresh address there is not a fresh destination.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// The key of a remote's network (see [`network_of`]).
fn network_key(ip: IpAddr) -> u64 {
    address_hash(network_of(ip), 0x6e65_7477_6f72_6b31)
}

/// A remote's network as an address no flow carries, for the seen-filter, which holds
/// addresses: inside 100::/64, the discard-only prefix (RFC 6666).
fn network_marker(ip: IpAddr) -> IpAddr {
    match network_of(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([
                0x100,
                0,
                0,
                0,
                4,
                u16::from_be_bytes([a, b]),
                u16::from(c),
                0,
            ])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([0x100, 0, 0, 0, 6, s[0], s[1], s[2]])
        }
    }
}

/// The key of a workload and a remote's network.
fn network_pair_key(workload: IpAddr, remote: IpAddr) -> u64 {
    key_of(workload) ^ network_key(remote).rotate_left(29)
}

/// The key of an ordered pair of addresses.
fn pair_key(a: IpAddr, b: IpAddr) -> u64 {
    key_of(a) ^ address_hash(b, 0x5bd1_e995_0000_0001).rotate_left(23)
}

/// Workloads seen talking to one remote, up to four: the rules only need to know whether a
/// remote is one workload's or shared, so the list stops growing there.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Audience {
    members: [u64; 4],
    len: u8,
}

impl Audience {
    /// Adds a workload; returns how many distinct workloads are known (at most 4).
    pub fn add(&mut self, workload: u64) -> usize {
        let n = usize::from(self.len);
        if !self.members[..n].contains(&workload) && n < self.members.len() {
            self.members[n] = workload;
            self.len += 1;
        }
        usize::from(self.len)
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// For a flow through the NAT with both ends known: whether the workload is sending (the
/// NAT-egress leg) or receiving (the return leg), the workload and the remote.
fn through_the_nat(f: &Flow) -> Option<(bool, IpAddr, IpAddr)> {
    let sending = match f.path {
        Path::NatEgress => true,
        Path::NatReturn => false,
        _ => return None,
    };
    Some((sending, f.workload?, f.remote?))
}

/// Byte counts for messages: 1.2 GB, 35.0 MB, 812 kB.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, size) in UNITS {
        if b >= size {
            return format!("{:.1} {unit}", b / size);
        }
    }
    format!("{b:.0} B")
}

fn hours(secs: u64) -> String {
    if secs >= 7_200 {
        format!("{:.1} h", secs as f64 / 3_600.0)
    } else {
        format!("{} min", secs / 60)
    }
}

// ---------------------------------------------------------------------------------------

/// A workload reaching a remote port for the first time after its learning period.
pub struct NewRemotePort {
    rule: NewRemotePortRule,
    state: PortState,
}

#[derive(Serialize, Deserialize)]
struct PortState {
    workloads: BoundedMap<u64, PortHistory>,
}

impl Snapshot for PortState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.workloads.set_capacity(configured.workloads.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PortHistory {
    since: u64,
    /// (protocol << 16 | port), sorted.
    ports: Vec<u32>,
}

/// Ports remembered per workload; beyond this every further new port is reported.
const MAX_PORTS_PER_WORKLOAD: usize = 256;

impl NewRemotePort {
    pub fn new(rule: NewRemotePortRule, entries: usize) -> Self {
        NewRemotePort {
            rule,
            state: PortState {
                workloads: BoundedMap::new(entries),
            },
        }
    }
}

impl Detector for NewRemotePort {
    fn state_evictions(&self) -> u64 {
        self.state.workloads.evicted
    }

    fn name(&self) -> &'static str {
        "new_remote_port"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress {
            return;
        }
        let (Some(w), Some(port)) = (f.workload, f.remote_port) else {
            return;
        };
        let key = (u32::from(f.protocol.unwrap_or(0)) << 16) | u32::from(port);
        let h = self
            .state
            .workloads
            .touch(key_of(w), f.end, || PortHistory {
                since: f.start,
                ports: Vec::new(),
            });
        h.since = h.since.min(f.start);
        let Err(at) = h.ports.binary_search(&key) else {
            return;
        };
        if h.ports.len() < MAX_PORTS_PER_WORKLOAD {
            h.ports.insert(at, key);
        }
        let history = f.end.saturating_sub(h.since);
        if history < self.rule.learning_seconds {
            return;
        }
        let known: Vec<String> = h
            .ports
            .iter()
            .filter(|k| **k != key)
            .take(12)
            .map(|k| (k & 0xffff).to_string())
            .collect();
        let summary = format!(
            "{} port {port} is new for this workload: in {} of history it used only remote ports [{}]",
            proto_name(f.protocol),
            hours(history),
            known.join(", ")
        );
        out.push(
            Finding::from_flow("new_remote_port", Severity::Medium, summary, f).with_evidence(
                Evidence {
                    observed: f64::from(port),
                    baseline: Some((h.ports.len() - 1) as f64),
                    threshold: 0.0,
                    unit: "port (baseline: ports known)".into(),
                },
            ),
        );
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

// ---------------------------------------------------------------------------------------

/// An exponentially weighted mean and mean absolute deviation: robust enough to a few
/// outliers, O(1) memory, and it follows a workload whose habits change.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ewma {
    pub samples: u64,
    pub mean: f64,
    pub deviation: f64,
}

impl Ewma {
    const ALPHA: f64 = 0.02;

    pub fn update(&mut self, x: f64) {
        if self.samples == 0 {
            self.mean = x;
            self.deviation = 0.0;
        } else {
            // Early samples weigh more so the baseline settles quickly.
            let a = Self::ALPHA.max(1.0 / (self.samples as f64 + 1.0));
            let d = (x - self.mean).abs();
            self.mean += a * (x - self.mean);
            self.deviation += a * (d - self.deviation);
        }
        self.samples += 1;
    }
}

/// Bytes sent to one remote within one window, against what this workload usually sends to
/// one remote in one window.
pub struct TrafficVolume {
    rule: TrafficVolumeRule,
    state: VolumeState,
}

#[derive(Serialize, Deserialize)]
struct VolumeState {
    pairs: BoundedMap<u64, PairWindow>,
    workloads: BoundedMap<u64, VolumeBaseline>,
    /// Remote network -> the workloads that talked to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: Option<u64>,
}

impl Snapshot for VolumeState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.pairs.set_capacity(configured.pairs.capacity());
        self.workloads.set_capacity(configured.workloads.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PairWindow {
    window: u64,
    sent: u64,
    received: u64,
    alerted: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct VolumeBaseline {
    per_window: Ewma,
    window: u64,
    /// The largest amount sent to one remote in `window` so far.
    window_max: u64,
}

impl TrafficVolume {
    pub fn new(rule: TrafficVolumeRule, entries: usize) -> Self {
        TrafficVolume {
            rule,
            state: VolumeState {
                pairs: BoundedMap::new(entries),
                workloads: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: None,
            },
        }
    }
}

impl Detector for TrafficVolume {
    fn state_evictions(&self) -> u64 {
        self.state.pairs.evicted + self.state.workloads.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "traffic_volume_unusual"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let window = f.end / self.rule.window_seconds;
        // A network the fleet shares (object storage, a package CDN) is where large transfers
        // of the team's work go, a new training job's first checkpoints included; an upload
        // there is not unusual by volume. (An attacker's bucket at the same provider looks
        // the same in a flow log: the residual risk the decision record accepts.)
        let popular = self
            .state
            .audience
            .touch(network_key(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let b = self
            .state
            .workloads
            .touch(key_of(w), f.end, VolumeBaseline::default);
        if window > b.window {
            if b.window_max > 0 {
                b.per_window.update(b.window_max as f64);
            }
            b.window = window;
            b.window_max = 0;
        }
        let baseline = b.per_window;
        let p = self
            .state
            .pairs
            .touch(pair_key(w, r), f.end, || PairWindow {
                window,
                sent: 0,
                received: 0,
                alerted: false,
            });
        if window > p.window {
            *p = PairWindow {
                window,
                sent: 0,
                received: 0,
                alerted: false,
            };
        }
        // A late record for a window already closed is judged on its own bytes.
        let (sent, received, alerted) = if window < p.window {
            if sending {
                (f.bytes, 0, false)
            } else {
                return;
            }
        } else {
            // Byte counts come from the input and may each be near 2^64: sums saturate.
            if sending {
                p.sent = p.sent.saturating_add(f.bytes);
            } else {
                p.received = p.received.saturating_add(f.bytes);
            }
            (p.sent, p.received, p.alerted)
        };
        if window == b.window {
            b.window_max = b.window_max.max(sent);
        }
        let first_flow = *self.state.first_flow.get_or_insert(f.start);
        if f.start < first_flow {
            self.state.first_flow = Some(f.start);
        }
        if !sending
            || alerted
            || baseline.samples < self.rule.learning_windows
            || f.end < first_flow.saturating_add(self.rule.learning_seconds)
            || popular
        {
            return;
        }
        let threshold = (self.rule.min_bytes as f64)
            .max(baseline.mean + self.rule.deviations * baseline.deviation);
        if (sent as f64) < threshold || (sent as f64) < self.rule.upload_ratio * received as f64 {
            return;
        }
        if window == p.window {
            p.alerted = true;
        }
        let summary = format!(
            "sent {} to {r} within one {}-s window (received {}); this workload usually sends {} ± {} to one remote per window (over {} active windows), threshold {}",
            human_bytes(sent as f64),
            self.rule.window_seconds,
            human_bytes(received as f64),
            human_bytes(baseline.mean),
            human_bytes(baseline.deviation),
            baseline.samples,
            human_bytes(threshold)
        );
        let mut finding = Finding::from_flow(self.name(), Severity::High, summary, f);
        finding.bytes = sent;
        out.push(finding.with_evidence(Evidence {
            observed: sent as f64,
            baseline: Some(baseline.mean),
            threshold,
            unit: "bytes per window".into(),
        }));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

// ---------------------------------------------------------------------------------------

/// A stable 64-bit hash of an address. The seen-filter is persisted, so its hash must not
/// change with the toolchain or a dependency (std's and rustc-hash's are free to).
fn address_hash(ip: IpAddr, seed: u64) -> u64 {
    let v = match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a) ^ (1u128 << 127),
    };
    let mut x = (v as u64) ^ ((v >> 64) as u64).rotate_left(29) ^ seed;
    // splitmix64's finaliser.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A Bloom filter sized for `capacity` members at about 1 % false positives.
#[derive(Serialize, Deserialize)]
struct Bloom {
    bits: Vec<u64>,
    hashes: u32,
    members: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        // m = -n ln p / (ln 2)^2 with p = 0.01; k = (m / n) ln 2.
        let m = ((capacity.max(1) as f64) * 9.585).ceil() as usize;
        Bloom {
            bits: vec![0; m.div_ceil(64)],
            hashes: 7,
            members: 0,
        }
    }

    fn positions(&self, ip: IpAddr) -> impl Iterator<Item = usize> {
        let m = (self.bits.len() * 64) as u64;
        let h1 = address_hash(ip, 0);
        let h2 = address_hash(ip, 0x5151_5151) | 1;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.positions(ip)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    fn insert(&mut self, ip: IpAddr) {
        let positions: Vec<usize> = self.positions(ip).collect();
        for p in positions {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.members += 1;
    }
}

/// Uploads to destinations no workload had contacted before, while they are still new.
pub struct RareDestination {
    rule: RareDestinationRule,
    state: RareState,
}

#[derive(Serialize, Deserialize)]
struct RareState {
    first_flow: Option<u64>,
    /// Destinations seen: the current generation and the one before it. When the current
    /// one is full it becomes the old one, so memory stays at two filters.
    current: Bloom,
    previous: Bloom,
    new_destinations: BoundedMap<u64, NewDestination>,
}

impl Snapshot for RareState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        if self.current.bits.len() != configured.current.bits.len() {
            return Err(
                "the seen-filter was sized for a different filter-capacity; starting to learn again"
                    .into(),
            );
        }
        self.new_destinations
            .set_capacity(configured.new_destinations.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct NewDestination {
    first_seen: u64,
    workloads: Audience,
    sent: u64,
    received: u64,
    alerted: bool,
}

impl RareDestination {
    pub fn new(rule: RareDestinationRule, entries: usize) -> Self {
        RareDestination {
            state: RareState {
                first_flow: None,
                current: Bloom::new(rule.filter_capacity),
                previous: Bloom::new(rule.filter_capacity),
                new_destinations: BoundedMap::new(entries),
            },
            rule,
        }
    }
}

impl Detector for RareDestination {
    fn state_evictions(&self) -> u64 {
        self.state.new_destinations.evicted
    }

    fn name(&self) -> &'static str {
        "rare_destination"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let s = &mut self.state;
        // New destinations are tracked by network: parts sent to many hosts of one new
        // network add up, and an address new in a network the fleet already uses is not new.
        let rk = network_key(r);
        let first_flow = *s.first_flow.get_or_insert(f.start);
        if f.start < first_flow {
            s.first_flow = Some(f.start);
        }
        if s.new_destinations.get(&rk).is_none() {
            let net = network_marker(r);
            if s.current.contains(net) || s.previous.contains(net) {
                return;
            }
            if s.current.members >= self.rule.filter_capacity {
                s.previous =
                    std::mem::replace(&mut s.current, Bloom::new(self.rule.filter_capacity));
            }
            s.current.insert(net);
            // Event times come from the input: a start near 2^64 must not overflow.
            if f.end < first_flow.saturating_add(self.rule.learning_seconds) {
                return;
            }
        }
        let d = s.new_destinations.touch(rk, f.end, || NewDestination {
            first_seen: f.start,
            workloads: Audience::default(),
            sent: 0,
            received: 0,
            alerted: false,
        });
        if f.end > d.first_seen.saturating_add(self.rule.new_for_seconds) {
            // No longer new: it stays in the seen-filter only.
            s.new_destinations.remove(&rk);
            return;
        }
        d.workloads.add(key_of(w));
        if sending {
            d.sent = d.sent.saturating_add(f.bytes);
        } else {
            d.received = d.received.saturating_add(f.bytes);
        }
        if !sending
            || d.alerted
            || d.workloads.len() > self.rule.max_workloads
            || d.sent < self.rule.upload_bytes
            || (d.sent as f64) < self.rule.upload_ratio * d.received as f64
        {
            return;
        }
        d.alerted = true;
        let summary = format!(
            "uploaded {} to {r} (received {}), in network {} that no workload had contacted before it appeared {} ago; {} workload(s) have contacted it since; threshold {}",
            human_bytes(d.sent as f64),
            human_bytes(d.received as f64),
            network_of(r),
            hours(f.end.saturating_sub(d.first_seen)),
            d.workloads.len(),
            human_bytes(self.rule.upload_bytes as f64)
        );
        let mut finding = Finding::from_flow("rare_destination", Severity::High, summary, f);
        finding.bytes = d.sent;
        finding.first_seen = d.first_seen;
        out.push(finding.with_evidence(Evidence {
            observed: d.sent as f64,
            baseline: Some(0.0),
            threshold: self.rule.upload_bytes as f64,
            unit: "bytes sent to a new destination".into(),
        }));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

// ---------------------------------------------------------------------------------------

/// Bytes sent to one remote over a sliding horizon, estimated from two fixed buckets (the
/// current one and the previous one weighted by how much of it still overlaps the horizon).
pub struct SlowDrip {
    rule: SlowDripRule,
    state: DripState,
}

#[derive(Serialize, Deserialize)]
struct DripState {
    pairs: BoundedMap<u64, Drip>,
    /// Remote network -> the workloads that talked to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: Option<u64>,
}

impl Snapshot for DripState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.pairs.set_capacity(configured.pairs.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Drip {
    bucket: u64,
    sent: [u64; 2],
    received: [u64; 2],
    flows: u64,
    first_seen: u64,
    alerted_bucket: Option<u64>,
}

impl SlowDrip {
    pub fn new(rule: SlowDripRule, entries: usize) -> Self {
        SlowDrip {
            rule,
            state: DripState {
                pairs: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: None,
            },
        }
    }
}

impl Detector for SlowDrip {
    fn state_evictions(&self) -> u64 {
        self.state.pairs.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "slow_drip"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let horizon = self.rule.horizon_seconds;
        // Per network, not per address: a drip spread over many hosts of one network is one
        // drip, and a storage service answering from ever new addresses is still shared.
        let shared = self
            .state
            .audience
            .touch(network_key(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let bucket = f.end / horizon;
        let d = self
            .state
            .pairs
            .touch(network_pair_key(w, r), f.end, || Drip {
                bucket,
                first_seen: f.start,
                ..Drip::default()
            });
        if bucket > d.bucket {
            let keep = bucket == d.bucket + 1;
            d.sent = [if keep { d.sent[1] } else { 0 }, 0];
            d.received = [if keep { d.received[1] } else { 0 }, 0];
            d.bucket = bucket;
        }
        // [0] is the previous bucket, [1] the current one; a record older than both is
        // counted with the previous bucket, which can only make the estimate larger.
        let slot = usize::from(bucket >= d.bucket);
        if sending {
            d.sent[slot] = d.sent[slot].saturating_add(f.bytes);
            d.flows += 1;
        } else {
            d.received[slot] = d.received[slot].saturating_add(f.bytes);
        }
        d.first_seen = d.first_seen.min(f.start);
        let first_flow = *self.state.first_flow.get_or_insert(f.start);
        let learning = f.end < first_flow.saturating_add(self.rule.learning_seconds);
        if !sending
            || shared
            || learning
            || d.alerted_bucket == Some(d.bucket)
            || d.flows < self.rule.min_flows
        {
            return;
        }
        let overlap = 1.0 - (f.end % horizon) as f64 / horizon as f64;
        let sent = d.sent[1] as f64 + d.sent[0] as f64 * overlap;
        let received = d.received[1] as f64 + d.received[0] as f64 * overlap;
        if sent < self.rule.bytes as f64 || sent < self.rule.upload_ratio * received {
            return;
        }
        d.alerted_bucket = Some(d.bucket);
        let summary = format!(
            "sent about {} to {r}'s network {} over the last {} (received {}) in {} flows since {}; no more than {} workload(s) talk to that network; threshold {} per {}",
            human_bytes(sent),
            network_of(r),
            hours(horizon),
            human_bytes(received),
            d.flows,
            crate::alert::rfc3339(d.first_seen),
            self.rule.max_workloads,
            human_bytes(self.rule.bytes as f64),
            hours(horizon)
        );
        let mut finding = Finding::from_flow("slow_drip", Severity::High, summary, f);
        finding.bytes = sent as u64;
        finding.first_seen = d.first_seen;
        finding.records = d.flows;
        out.push(finding.with_evidence(Evidence {
            observed: sent,
            baseline: None,
            threshold: self.rule.bytes as f64,
            unit: "bytes per horizon".into(),
        }));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

// ---------------------------------------------------------------------------------------

/// Bowley's quartile skewness mapped to a regularity score: 1 for symmetric, 0 for fully
/// skewed. Like RITA, a spread under 10 units or a median sitting on a quartile counts as
/// symmetric.
fn bowley_score(sorted: &[f64]) -> f64 {
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let (q1, q2, q3) = (q(0.25), q(0.5), q(0.75));
    if q3 - q1 < 10.0 || q2 == q1 || q2 == q3 {
        return 1.0;
    }
    1.0 - ((q1 + q3 - 2.0 * q2) / (q3 - q1)).abs()
}

/// (median - MAD) / median: 1 when every value equals the median.
fn mad_score(sorted: &[f64]) -> f64 {
    let median = sorted[sorted.len() / 2];
    if median <= 0.0 {
        return 0.0;
    }
    let mut dev: Vec<f64> = sorted.iter().map(|x| (x - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = dev[dev.len() / 2];
    ((median - mad) / median).max(0.0)
}

/// The beacon score of a series: the mean of a timing score (inter-connection gaps) and a
/// size score (bytes sent per connection), each the mean of the Bowley and MAD scores.
pub fn beacon_score(starts: &[u64], sizes: &[u64]) -> Option<(f64, f64)> {
    let mut starts = starts.to_vec();
    starts.sort_unstable();
    let mut gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    if gaps.len() < 3 {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    let mut sizes: Vec<f64> = sizes.iter().map(|s| *s as f64).collect();
    sizes.sort_by(f64::total_cmp);
    let timing = (bowley_score(&gaps) + mad_score(&gaps)) / 2.0;
    let size = (bowley_score(&sizes) + mad_score(&sizes)) / 2.0;
    Some(((timing + size) / 2.0, gaps[gaps.len() / 2]))
}

/// Periodic connections with regular sizes from one workload to one remote port.
pub struct Beaconing {
    rule: BeaconingRule,
    state: BeaconState,
}

#[derive(Serialize, Deserialize)]
struct BeaconState {
    series: BoundedMap<u64, Series>,
    /// Remote -> the workloads that opened connections to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
}

impl Snapshot for BeaconState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.series.set_capacity(configured.series.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

/// Connection starts are kept as seconds since this instant (2020-09-13) in 32 bits, which
/// halves the rule's memory and lasts until the 2150s.
const SERIES_EPOCH: u64 = 1_600_000_000;

#[derive(Serialize, Deserialize, Default)]
struct Series {
    starts: Vec<u32>,
    sizes: Vec<u32>,
    alerted: bool,
}

impl Beaconing {
    pub fn new(rule: BeaconingRule, entries: usize) -> Self {
        Beaconing {
            rule,
            state: BeaconState {
                series: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
            },
        }
    }
}

impl Detector for Beaconing {
    fn state_evictions(&self) -> u64 {
        self.state.series.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "beaconing"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress || !f.opens_connection {
            return;
        }
        let (Some(w), Some(r), Some(port)) = (f.workload, f.remote, f.remote_port) else {
            return;
        };
        let shared = self
            .state
            .audience
            .touch(key_of(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let s = self.state.series.touch(
            pair_key(w, r) ^ u64::from(port).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            f.end,
            Series::default,
        );
        if s.starts.len() >= self.rule.history {
            s.starts.remove(0);
            s.sizes.remove(0);
        }
        s.starts
            .push(u32::try_from(f.start.saturating_sub(SERIES_EPOCH)).unwrap_or(u32::MAX));
        s.sizes.push(u32::try_from(f.bytes).unwrap_or(u32::MAX));
        if s.alerted || shared || s.starts.len() < self.rule.min_connections {
            return;
        }
        let starts: Vec<u64> = s.starts.iter().map(|t| u64::from(*t)).collect();
        let sizes: Vec<u64> = s.sizes.iter().map(|b| u64::from(*b)).collect();
        let Some((score, period)) = beacon_score(&starts, &sizes) else {
            return;
        };
        if score < self.rule.score || period < self.rule.min_interval_seconds as f64 {
            return;
        }
        s.alerted = true;
        let median_size = {
            let mut v = s.sizes.clone();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let first = starts.iter().min().map_or(f.start, |t| t + SERIES_EPOCH);
        let summary = format!(
            "beacon-like connections to {r}:{port}: {} connections about every {:.0} s with about {} sent each; regularity score {:.2} (threshold {:.2})",
            s.starts.len(),
            period,
            human_bytes(median_size as f64),
            score,
            self.rule.score
        );
        let severity = if score >= 0.95 {
            Severity::High
        } else {
            Severity::Medium
        };
        let mut finding = Finding::from_flow("beaconing", severity, summary, f);
        finding.first_seen = first;
        finding.records = s.starts.len() as u64;
        out.push(finding.with_evidence(Evidence {
            observed: score,
            baseline: Some(period),
            threshold: self.rule.score,
            unit: "beacon score (baseline: median period, s)".into(),
        }));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

// ---------------------------------------------------------------------------------------

/// Windows a scan key is kept after it closes: enough to cover fifteen minutes of lateness.
fn scan_late_windows(window_seconds: u64) -> u64 {
    900u64.div_ceil(window_seconds.max(1)) + 1
}

/// Outbound scanning within a window: many ports on one host, or one port on many hosts.
/// Attempts count whether the security group let them through or not.
pub struct PortScan {
    rule: PortScanRule,
    state: ScanState,
}

#[derive(Serialize, Deserialize)]
struct ScanState {
    /// The newest window seen; keys older than the few windows late records can still reach
    /// are dropped when it advances.
    newest_window: u64,
    /// (workload, host, window) -> distinct ports, exact up to the threshold.
    ports_per_host: BoundedMap<(IpAddr, IpAddr, u64), Vec<u16>>,
    /// (workload, port, window) -> distinct hosts, exact up to the threshold.
    hosts_per_port: BoundedMap<(IpAddr, u16, u64), Vec<IpAddr>>,
}

impl Snapshot for ScanState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.ports_per_host
            .set_capacity(configured.ports_per_host.capacity());
        self.hosts_per_port
            .set_capacity(configured.hosts_per_port.capacity());
        Ok(())
    }
}

impl PortScan {
    pub fn new(rule: PortScanRule, entries: usize) -> Self {
        PortScan {
            rule,
            state: ScanState {
                newest_window: 0,
                ports_per_host: BoundedMap::new(entries),
                hosts_per_port: BoundedMap::new(entries),
            },
        }
    }
}

impl Detector for PortScan {
    fn state_evictions(&self) -> u64 {
        self.state.ports_per_host.evicted + self.state.hosts_per_port.evicted
    }

    fn name(&self) -> &'static str {
        "port_scan"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if !matches!(f.path, Path::NatEgress | Path::RejectedEgress) || !f.opens_connection {
            return;
        }
        let (Some(w), Some(r), Some(port)) = (f.workload, f.remote, f.remote_port) else {
            return;
        };
        let window = f.start / self.rule.window_seconds;
        if window > self.state.newest_window {
            self.state.newest_window = window;
            // Records arrive up to about ten minutes late; older windows are settled.
            let keep_from = window.saturating_sub(scan_late_windows(self.rule.window_seconds));
            self.state.ports_per_host.retain(|k| k.2 >= keep_from);
            self.state.hosts_per_port.retain(|k| k.2 >= keep_from);
        }
        let ports = self
            .state
            .ports_per_host
            .touch((w, r, window), f.end, Vec::new);
        if ports.len() < self.rule.distinct_ports && !ports.contains(&port) {
            ports.push(port);
            if ports.len() == self.rule.distinct_ports {
                let summary = format!(
                    "{} distinct ports on {r} within {} s (e.g. {:?}); threshold {}",
                    ports.len(),
                    self.rule.window_seconds,
                    &ports[..ports.len().min(8)],
                    self.rule.distinct_ports
                );
                let mut finding = Finding::from_flow("port_scan", Severity::Medium, summary, f);
                finding.remote_port = None;
                finding.first_seen = window * self.rule.window_seconds;
                out.push(finding.with_evidence(Evidence {
                    observed: ports.len() as f64,
                    baseline: None,
                    threshold: self.rule.distinct_ports as f64,
                    unit: "distinct ports on one host".into(),
                }));
            }
        }
        let hosts = self
            .state
            .hosts_per_port
            .touch((w, port, window), f.end, Vec::new);
        if hosts.len() < self.rule.distinct_hosts && !hosts.contains(&r) {
            hosts.push(r);
            if hosts.len() == self.rule.distinct_hosts {
                let summary = format!(
                    "{} {} port {port} on {} distinct hosts within {} s (e.g. {}); threshold {}",
                    proto_name(f.protocol),
                    if f.path == Path::RejectedEgress {
                        "attempts to"
                    } else {
                        "connections to"
                    },
                    hosts.len(),
                    self.rule.window_seconds,
                    hosts
                        .iter()
                        .take(4)
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.rule.distinct_hosts
                );
                let mut finding = Finding::from_flow("port_sweep", Severity::High, summary, f);
                finding.remote = None;
                finding.first_seen = window * self.rule.window_seconds;
                out.push(finding.with_evidence(Evidence {
                    observed: hosts.len() as f64,
                    baseline: None,
                    threshold: self.rule.distinct_hosts as f64,
                    unit: "distinct hosts on one port".into(),
                }));
            }
        }
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "10.0.1.5";

    fn flow(path: Path, remote: &str, port: u16, bytes: u64, start: u64) -> Flow<'static> {
        Flow {
            path,
            workload: Some(W.parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            remote_port: Some(port),
            protocol: Some(6),
            bytes,
            packets: 1,
            action: Some("ACCEPT"),
            end: start + 59,
            start,
            interface_id: Some("eni-nat"),
            instance_id: None,
            opens_connection: true,
        }
    }

    fn run(d: &mut dyn Detector, flows: &[Flow]) -> Vec<Finding> {
        let mut out = Vec::new();
        for f in flows {
            d.observe(f, &mut out);
        }
        out
    }

    #[test]
    fn new_remote_port_after_learning_and_across_a_restart() {
        let rule = NewRemotePortRule {
            enabled: true,
            learning_seconds: 3_600,
        };
        let mut d = NewRemotePort::new(rule.clone(), 100);
        let learning: Vec<Flow> = (0..60)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "198.51.100.1",
                    if i == 5 { 8443 } else { 443 },
                    10,
                    1_000 + i * 60,
                )
            })
            .collect();
        assert!(run(&mut d, &learning).is_empty());
        // After the learning hour: 443 and 8443 are known, 4444 is new, and new only once.
        let later = [
            flow(Path::NatEgress, "198.51.100.2", 443, 10, 9_000),
            flow(Path::NatEgress, "198.51.100.2", 8443, 10, 9_000),
            flow(Path::NatEgress, "198.51.100.2", 4444, 10, 9_060),
            flow(Path::NatEgress, "198.51.100.3", 4444, 10, 9_120),
        ];
        // State survives a snapshot into a fresh detector.
        let mut restored = NewRemotePort::new(rule, 100);
        restored.load_state(&d.save_state().unwrap()).unwrap();
        let found = run(&mut restored, &later);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, "new_remote_port");
        assert_eq!(found[0].remote_port, Some(4444));
        assert!(
            found[0].summary.contains("[443, 8443]"),
            "{}",
            found[0].summary
        );
        assert!(restored
            .load_state(b"junk")
            .unwrap_err()
            .contains("new_remote_port"));
    }

    #[test]
    fn traffic_volume_against_the_workloads_baseline() {
        let rule = TrafficVolumeRule {
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut d = TrafficVolume::new(rule, 1_000);
        // 40 windows of about 1 MB sent to a handful of remotes.
        let mut flows = Vec::new();
        for i in 0..40u64 {
            flows.push(flow(
                Path::NatEgress,
                "198.51.100.1",
                443,
                900_000 + i * 5_000,
                i * 60,
            ));
            flows.push(flow(
                Path::NatReturn,
                "198.51.100.1",
                443,
                20_000_000,
                i * 60,
            ));
        }
        assert!(run(&mut d, &flows).is_empty());
        // A big download is not an upload; a big upload is flagged once, with the numbers.
        let t = 40 * 60;
        let mut later = vec![
            flow(Path::NatReturn, "198.51.100.9", 443, 900_000_000, t),
            flow(Path::NatEgress, "198.51.100.9", 443, 60_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
        ];
        later[1].end = t + 59;
        let found = run(&mut d, &later);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.remote, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(f.bytes, 60_000_000);
        let e = f.evidence.as_ref().unwrap();
        assert_eq!(e.threshold, 50_000_000.0);
        assert!(
            (e.baseline.unwrap() - 1_000_000.0).abs() < 200_000.0,
            "{e:?}"
        );
    }

    #[test]
    fn rare_destination_uploads() {
        let rule = RareDestinationRule {
            learning_seconds: 3_600,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        let learn: Vec<Flow> = (0..50)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    &format!("198.51.100.{i}"),
                    443,
                    1_000,
                    i * 60,
                )
            })
            .collect();
        assert!(run(&mut d, &learn).is_empty());
        let t = 7_200;
        let mut other = flow(Path::NatEgress, "203.0.116.50", 443, 6_000_000, t);
        other.workload = Some("10.0.1.6".parse().unwrap());
        let flows = [
            // Known during learning: never flagged, however much.
            flow(Path::NatEgress, "198.51.100.3", 443, 500_000_000, t),
            // New, uploads 12 MB in two records: flagged when the total crosses 10 MB.
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t),
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t + 60),
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t + 120),
            // New but a download.
            flow(Path::NatReturn, "203.0.114.10", 443, 90_000_000, t),
            flow(Path::NatEgress, "203.0.114.10", 443, 12_000_000, t),
        ];
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].remote, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(found[0].bytes, 12_000_000);
        // A new destination three workloads use is shared, not one workload's drop point.
        let mut shared = Vec::new();
        for w in ["10.0.1.7", "10.0.1.8", "10.0.1.9"] {
            let mut f = flow(Path::NatEgress, "203.0.115.60", 443, 100, t);
            f.workload = Some(w.parse().unwrap());
            shared.push(f);
        }
        shared.push(flow(Path::NatEgress, "203.0.115.60", 443, 50_000_000, t));
        shared.push(other);
        assert!(run(&mut d, &shared).is_empty());

        // A snapshot carries what was learnt, but the table limits come from the new
        // configuration; a filter sized differently cannot be reused and says so.
        let saved = d.save_state().unwrap();
        let mut restored = RareDestination::new(RareDestinationRule::default(), 10);
        restored.load_state(&saved).unwrap();
        assert_eq!(restored.state.new_destinations.capacity(), 10);
        assert!(restored
            .state
            .current
            .contains(network_marker("198.51.100.3".parse().unwrap())));
        let resized = RareDestinationRule {
            filter_capacity: 5_000,
            ..RareDestinationRule::default()
        };
        let err = RareDestination::new(resized, 1_000)
            .load_state(&saved)
            .unwrap_err();
        assert!(
            err.starts_with("saved state of rule rare_destination: the seen-filter was sized"),
            "{err}"
        );
    }

    #[test]
    fn bloom_has_no_false_negatives_and_about_one_percent_false_positives() {
        let mut b = Bloom::new(10_000);
        for i in 0..10_000u32 {
            b.insert(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert!((0..10_000u32).all(|i| b.contains(IpAddr::V4((0x0a00_0000 + i).into()))));
        let fp = (0..100_000u32)
            .filter(|i| b.contains(IpAddr::V4((0xc000_0000 + i).into())))
            .count();
        assert!(fp < 2_000, "{fp} false positives in 100,000");
    }

    #[test]
    fn slow_drip_over_the_horizon() {
        let rule = SlowDripRule {
            learning_seconds: 0,
            ..SlowDripRule::default()
        };
        let mut d = SlowDrip::new(rule.clone(), 1_000);
        // 3 MB every 5 minutes, far below any per-window threshold: 100 MB after 34 drips.
        let flows: Vec<Flow> = (0..60)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "203.0.113.9",
                    443,
                    3_000_000,
                    21_600 * 10 + i * 300,
                )
            })
            .collect();
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].records, 34);
        assert!(found[0].bytes >= 100_000_000 && found[0].bytes < 103_000_000);
        // The same volume to a remote three workloads share is not a drip.
        let mut d = SlowDrip::new(rule, 1_000);
        let mut flows = flows;
        for (i, f) in flows.iter_mut().enumerate() {
            f.workload = Some(format!("10.0.1.{}", 5 + i % 3).parse().unwrap());
            f.bytes *= 3;
        }
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn beacon_scores() {
        // A 300-s beacon with a few seconds of jitter and constant sizes scores near 1.
        let starts: Vec<u64> = (0..12).map(|i| 10_000 + i * 300 + (i * 7) % 11).collect();
        let sizes = vec![512; 12];
        let (score, period) = beacon_score(&starts, &sizes).unwrap();
        assert!(score > 0.95, "{score}");
        assert!((295.0..=305.0).contains(&period));
        // Irregular gaps and sizes score low.
        let starts = [0, 40, 45, 900, 2_000, 2_010, 7_000, 7_300, 12_000, 12_001];
        let sizes = [
            500, 90_000, 3_000, 12, 700_000, 4_000, 80, 55_000, 1_200, 9_999,
        ];
        let (score, _) = beacon_score(&starts, &sizes).unwrap();
        assert!(score < 0.6, "{score}");
        assert_eq!(beacon_score(&[1, 2, 3], &[1, 1, 1]), None);

        let mut d = Beaconing::new(BeaconingRule::default(), 1_000);
        let flows: Vec<Flow> = (0..12)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "203.0.113.9",
                    443,
                    512,
                    1_764_000_000 + i * 300 + (i * 7) % 11,
                )
            })
            .collect();
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].records, 8, "found at the eighth connection");
        assert_eq!(found[0].severity, Severity::High);
        // Records of a connection already open (no SYN) are not new beacons.
        let mut d = Beaconing::new(BeaconingRule::default(), 1_000);
        let mut flows = flows;
        flows.iter_mut().for_each(|f| f.opens_connection = false);
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn scans_and_sweeps_counted_exactly_up_to_the_threshold() {
        let mut d = PortScan::new(PortScanRule::default(), 1_000);
        let mut flows: Vec<Flow> = (0..40)
            .map(|p| {
                flow(
                    Path::RejectedEgress,
                    "203.0.113.9",
                    1_000 + p,
                    60,
                    600 + p as u64,
                )
            })
            .collect();
        // Repeats of the same port do not count twice.
        flows.extend((0..40).map(|_| flow(Path::RejectedEgress, "203.0.113.8", 22, 60, 610)));
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].rule, found[0].remote_port), ("port_scan", None));
        assert_eq!(found[0].evidence.as_ref().unwrap().observed, 24.0);
        let sweep: Vec<Flow> = (0..100)
            .map(|h| {
                flow(
                    Path::NatEgress,
                    &format!("198.51.{}.{}", h / 50, h % 50 + 1),
                    443,
                    60,
                    900 + h,
                )
            })
            .collect();
        let found = run(&mut d, &sweep);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].rule, found[0].remote, found[0].remote_port),
            ("port_sweep", None, Some(443))
        );
    }

    /// Bytes come from the input, and AWS's field is a u64: sums must stop at u64::MAX
    /// rather than wrap (a panic in debug builds, a small number in release builds).
    #[test]
    fn byte_sums_saturate_instead_of_wrapping() {
        const HUGE: u64 = u64::MAX - 1;
        let t = 1_764_150_000;
        let w: IpAddr = W.parse().unwrap();
        let up = |remote: &str| flow(Path::NatEgress, remote, 443, HUGE, t);
        let down = |remote: &str| flow(Path::NatReturn, remote, 443, HUGE, t);

        // Rare destination: a threshold only a saturated sum reaches. Two near-2^64 uploads
        // cross it on the second (a wrapped sum, 2^64 - 4, would never).
        let rule = RareDestinationRule {
            learning_seconds: 0,
            upload_bytes: u64::MAX,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        assert!(run(&mut d, &[up("203.0.113.5")]).is_empty());
        let found = run(&mut d, &[up("203.0.113.5"), up("203.0.113.5")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, u64::MAX);
        let r: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(
            d.state.new_destinations.get(&network_key(r)).unwrap().sent,
            u64::MAX
        );
        run(&mut d, &[down("203.0.113.5"), down("203.0.113.5")]);
        assert_eq!(
            d.state
                .new_destinations
                .get(&network_key(r))
                .unwrap()
                .received,
            u64::MAX
        );

        // Traffic volume: the pair's window sums.
        let rule = TrafficVolumeRule {
            learning_windows: 0,
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut v = TrafficVolume::new(rule, 1_000);
        let found = run(
            &mut v,
            &[up("203.0.113.5"), up("203.0.113.5"), up("203.0.113.5")],
        );
        // Reported once for the window, when the first record crossed the threshold.
        assert_eq!(found.len(), 1, "{found:?}");
        run(&mut v, &[down("203.0.113.5"), down("203.0.113.5")]);
        let pair = v.state.pairs.get(&pair_key(w, r)).unwrap();
        assert_eq!((pair.sent, pair.received), (u64::MAX, u64::MAX));

        // Slow drip: both buckets' sums, and the estimate the finding reports.
        let rule = SlowDripRule {
            learning_seconds: 0,
            min_flows: 1,
            ..SlowDripRule::default()
        };
        let mut s = SlowDrip::new(rule, 1_000);
        let found = run(&mut s, &[up("203.0.113.5"), up("203.0.113.5")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, u64::MAX);
        run(&mut s, &[down("203.0.113.5"), down("203.0.113.5")]);
        let drip = s.state.pairs.get(&network_pair_key(w, r)).unwrap();
        assert_eq!((drip.sent[1], drip.received[1]), (u64::MAX, u64::MAX));
    }

    /// Event times come from the input too: records stamped near the end of u64 go through
    /// every rule without an overflow, with the rules' default periods added to them.
    #[test]
    fn event_times_near_the_end_of_u64_do_not_overflow() {
        let start = u64::MAX - 59;
        let late = |remote: &str, port: u16| {
            let mut f = flow(Path::NatEgress, remote, port, u64::MAX - 1, start);
            f.end = u64::MAX;
            f
        };
        let flows: Vec<Flow> = (0..80)
            .map(|i| late(&format!("203.0.113.{}", i % 3 + 1), 1_000 + i as u16))
            .collect();
        let mut detectors: Vec<Box<dyn Detector>> = vec![
            Box::new(NewRemotePort::new(NewRemotePortRule::default(), 1_000)),
            Box::new(TrafficVolume::new(TrafficVolumeRule::default(), 1_000)),
            Box::new(RareDestination::new(RareDestinationRule::default(), 1_000)),
            Box::new(SlowDrip::new(SlowDripRule::default(), 1_000)),
            Box::new(Beaconing::new(BeaconingRule::default(), 1_000)),
            Box::new(PortScan::new(PortScanRule::default(), 1_000)),
        ];
        let mut rules_that_fired = Vec::new();
        for d in &mut detectors {
            rules_that_fired.extend(run(d.as_mut(), &flows).iter().map(|f| f.rule));
        }
        // New port and volume are still learning and beaconing needs regular gaps; the rare-
        // destination rule's learning day, added to a start this late, saturates at the end of
        // u64 and so is over. The rest judge as usual: 27 ports on each of three hosts, and
        // near-2^64 uploads to destinations new and private to one workload.
        rules_that_fired.sort_unstable();
        rules_that_fired.dedup();
        assert_eq!(
            rules_that_fired,
            ["port_scan", "rare_destination", "slow_drip"]
        );
    }

    /// Providers answer from ever new addresses of a few networks; attackers can spread one
    /// upload over many hosts of one. Both are judged by network.
    #[test]
    fn novelty_and_sharing_are_judged_per_network() {
        let rule = RareDestinationRule {
            learning_seconds: 3_600,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        // Learnt: storage at 52.219.40.0/24.
        let learn = [flow(Path::NatReturn, "52.219.40.10", 443, 5_000_000, 0)];
        assert!(run(&mut d, &learn).is_empty());
        let t = 7_200;
        // A checkpoint upload to a fresh address of that network: not new.
        let rotated = [flow(Path::NatEgress, "52.219.40.201", 443, 400_000_000, t)];
        assert!(run(&mut d, &rotated).is_empty());
        // 4 MB to each of four hosts of a network never seen: one new destination, 16 MB.
        let spray: Vec<Flow> = (1..=4)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    &format!("198.18.7.{i}"),
                    443,
                    4_000_000,
                    t + i,
                )
            })
            .collect();
        let found = run(&mut d, &spray);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].bytes, 12_000_000,
            "flagged as the sum crossed 10 MB"
        );
        assert!(
            found[0].summary.contains("network 198.18.7.0"),
            "{}",
            found[0].summary
        );

        // The slow drip counts a network's hosts together, and a network three workloads
        // use is shared even when each used another address of it.
        let rule = SlowDripRule {
            learning_seconds: 0,
            ..SlowDripRule::default()
        };
        let mut s = SlowDrip::new(rule.clone(), 1_000);
        let drips: Vec<Flow> = (0..40)
            .map(|i| {
                let remote = format!("198.18.9.{}", i % 30 + 1);
                flow(Path::NatEgress, &remote, 443, 3_000_000, 100_000 + i * 300)
            })
            .collect();
        assert_eq!(run(&mut s, &drips).len(), 1);
        let mut s = SlowDrip::new(rule, 1_000);
        let mut shared = drips.clone();
        for (i, f) in shared.iter_mut().enumerate() {
            f.workload = Some(format!("10.0.1.{}", 5 + i % 3).parse().unwrap());
        }
        assert!(run(&mut s, &shared).is_empty());
    }
}
