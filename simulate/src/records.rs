//! Turns connections into the records AWS would write and delivers them: per 60-second
//! window, on every interface that sees the traffic (the workload's own, and the NAT
//! gateway's inner and outer legs), each interface's window arriving one to ten minutes
//! after it closed, so event times interleave out of order across interfaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use flowlog::{Field, Format};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::traffic::{attack, benign_minute, Conn, Route, Services, Surroundings, Workload};
use crate::{Label, Profile, Scenario, Settings, Stats};

const WINDOW: u64 = 60;

/// One record as delivered.
pub struct Delivered<'a> {
    /// The log stream AWS writes it to: `{interface-id}-all`.
    pub stream: &'a str,
    /// The CloudWatch event timestamp (the window's start), in milliseconds.
    pub timestamp_ms: i64,
    /// When it reaches the log group (Unix seconds).
    pub delivered_at: u64,
    pub line: &'a str,
    /// The attack it belongs to, if any.
    pub label: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    NoData,
    SkipData,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    interface: u32,
    start: u64,
    end: u64,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    packets: u64,
    bytes: u64,
    reject: bool,
    status: Status,
    pkt_src: Ipv4Addr,
    pkt_dst: Ipv4Addr,
    tcp_flags: u8,
    egress: bool,
    /// traffic-path for egress records.
    path: Option<u8>,
    src_service: Option<&'static str>,
    dst_service: Option<&'static str>,
    label: Option<u32>,
}

struct Interface {
    id: String,
    stream: String,
    subnet_id: String,
    az_id: String,
}

/// A seeded, deterministic traffic generator for one stack.
pub struct Simulator {
    settings: Settings,
    rng: Pcg64Mcg,
    workloads: Vec<Workload>,
    interfaces: Vec<Interface>,
    services: Services,
    efs: Ipv4Addr,
    labels: Vec<Label>,
    attacks: Vec<Conn>,
    /// Benign profiles seen per remote /24 (bit per profile), for blaming false findings.
    profiles_by_network: HashMap<u32, u16>,
    /// Benign profiles seen per workload.
    profiles_by_workload: Vec<u16>,
}

impl Simulator {
    pub fn new(settings: Settings) -> Result<Self, String> {
        if settings.network.private_subnets.is_empty() {
            return Err("the network has no private subnet to place workloads in".into());
        }
        if settings.duration_seconds < WINDOW {
            return Err("duration must be at least one minute".into());
        }
        let mut rng = Pcg64Mcg::seed_from_u64(settings.seed);
        let net = &settings.network;
        let mut workloads = Vec::new();
        let mut interfaces = Vec::new();
        for i in 0..settings.workloads {
            let subnet = i % net.private_subnets.len();
            let s = &net.private_subnets[subnet];
            let offset = 10 + (i / net.private_subnets.len()) as u32;
            if offset + 1 >= s.size {
                return Err(format!(
                    "{} workloads do not fit in the private subnets",
                    settings.workloads
                ));
            }
            let ip = Ipv4Addr::from(u32::from(s.base) + offset);
            let id = format!("eni-0{:016x}", rng.random::<u64>() >> 4);
            interfaces.push(Interface {
                stream: format!("{id}-all"),
                id: id.clone(),
                subnet_id: s.id.clone(),
                az_id: s.az_id.clone(),
            });
            workloads.push(Workload {
                ip,
                interface_id: id,

                scale: rng.random_range(0.5..1.6),
                utc_offset_hours: rng.random_range(-1..=2),
                works_weekends: rng.random_bool(0.2),
                tracks_experiments: rng.random_bool(0.5),
            });
        }
        interfaces.push(Interface {
            id: net.nat_interface_id.clone(),
            stream: format!("{}-all", net.nat_interface_id),
            subnet_id: net.nat_subnet_id.clone(),
            az_id: net.private_subnets[0].az_id.clone(),
        });
        let s0 = &net.private_subnets[0];
        let efs = Ipv4Addr::from(u32::from(s0.base) + s0.size.saturating_sub(6));
        let efs_id = format!("eni-0{:016x}", rng.random::<u64>() >> 4);
        interfaces.push(Interface {
            stream: format!("{efs_id}-all"),
            id: efs_id,
            subnet_id: s0.id.clone(),
            az_id: s0.az_id.clone(),
        });
        let start = settings.start / WINDOW * WINDOW;
        let end = start + settings.duration_seconds;
        let mut labels = Vec::new();
        let mut attacks = Vec::new();
        let attack_list: Vec<Scenario> = settings.selection.attacks.clone();
        if !attack_list.is_empty() && workloads.is_empty() {
            return Err("attacks need at least one workload".into());
        }
        let earliest = start
            + settings
                .attacks_after_seconds
                .min(settings.duration_seconds);
        let mut played: Vec<usize> = Vec::new();
        for (n, scenario) in attack_list.into_iter().enumerate() {
            let id = n as u32 + 1;
            let mut w = rng.random_range(0..workloads.len());
            if scenario.needs_a_quiet_workload() {
                // A quiet workload: not one of the training jobs, nightly exporters or S3
                // pipelines whose own history has gigabytes an hour, nor one another attack
                // already plays (its gigabytes would be this one's history).
                let busy = |w: usize| w.is_multiple_of(4) || w % 7 == 2 || w % 10 == 3;
                for _ in 0..workloads.len() {
                    if !busy(w) && !played.contains(&w) {
                        break;
                    }
                    w = (w + 1) % workloads.len();
                }
            }
            played.push(w);
            let (earliest, latest) = if scenario.in_the_first_hour() {
                (start, start + 3_600)
            } else {
                let latest = end
                    .saturating_sub(scenario.span_seconds())
                    .max(earliest + 1);
                (earliest, latest)
            };
            let at = rng.random_range(earliest..latest);
            let a = attack(
                &mut rng,
                scenario,
                w,
                workloads.len(),
                &net.s3_addresses,
                at,
                end,
                id,
            );
            let first = a.conns.iter().map(|c| c.start).min().unwrap_or(at);
            let last = a
                .conns
                .iter()
                .map(|c| c.start + c.duration)
                .max()
                .unwrap_or(at);
            labels.push(Label {
                id,
                scenario,
                workload: IpAddr::V4(workloads[w].ip),
                interface_id: workloads[w].interface_id.clone(),
                accomplices: a
                    .accomplices
                    .iter()
                    .map(|i| IpAddr::V4(workloads[*i].ip))
                    .collect(),
                remotes: a.remotes.iter().map(|r| IpAddr::V4(*r)).collect(),
                remote_port: a.remote_port,
                start: first,
                end: last,
                records: 0,
            });
            attacks.extend(a.conns.into_iter().filter(|c| c.start < end));
        }
        attacks.sort_by_key(|c| c.start);
        let profiles_by_workload = vec![0; workloads.len()];
        Ok(Simulator {
            settings,
            rng,
            workloads,
            interfaces,
            services: Services::new(),
            efs,
            profiles_by_workload,
            labels,
            attacks,
            profiles_by_network: HashMap::new(),
        })
    }

    /// Ground truth: one label per attack (record counts are filled in by `run`).
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The benign profiles whose traffic `workload` sent to `remote`'s /24 (IPv4) during
    /// `run`: the likely cause of a false finding about them. Without a remote, the
    /// workload's profiles.
    pub fn benign_profiles(
        &self,
        workload: Option<IpAddr>,
        remote: Option<IpAddr>,
    ) -> Vec<Profile> {
        let by_workload = workload
            .and_then(|w| self.workloads.iter().position(|x| IpAddr::V4(x.ip) == w))
            .map_or(u16::MAX, |i| self.profiles_by_workload[i]);
        let by_network = match remote {
            Some(IpAddr::V4(r)) => self
                .profiles_by_network
                .get(&(u32::from(r) >> 8))
                .copied()
                .unwrap_or(0),
            Some(IpAddr::V6(_)) => 0,
            None => u16::MAX,
        };
        let bits = by_workload & by_network;
        Profile::ALL
            .into_iter()
            .filter(|p| bits & p.bit() != 0 && *p != Profile::BatchedDelivery)
            .collect()
    }

    /// Generates the whole run, handing each record to `emit` in delivery order.
    pub fn run(&mut self, format: &Format, mut emit: impl FnMut(&Delivered<'_>)) -> Stats {
        let start = self.settings.start / WINDOW * WINDOW;
        let end = start + self.settings.duration_seconds;
        let benign = self.settings.selection.benign();
        let batched = self.settings.selection.rate(Profile::BatchedDelivery) > 0.0;
        let mut heap: BinaryHeap<Reverse<(u64, u64, Rec)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut stats = Stats::default();
        let mut remotes: HashSet<Ipv4Addr> = HashSet::new();
        let mut line = String::with_capacity(512);
        let mut conns = Vec::new();
        let mut next_attack = 0usize;
        let mut t = start;
        while t < end {
            conns.clear();
            if benign {
                let around = Surroundings {
                    services: &self.services,
                    efs: self.efs,
                    s3: &self.settings.network.s3_addresses,
                    new_destinations_per_hour: self.settings.new_destinations_per_hour,
                    selection: &self.settings.selection,
                };
                for (i, w) in self.workloads.iter().enumerate() {
                    let before = conns.len();
                    benign_minute(&mut self.rng, &around, w, i, t, &mut conns);
                    if conns.len() == before && self.rng.random_bool(0.03) {
                        let r = status_record(i as u32, t, Status::NoData);
                        push(&mut heap, &mut seq, self.settings.seed, r, end, batched);
                    }
                }
            }
            while next_attack < self.attacks.len() && self.attacks[next_attack].start < t + WINDOW {
                conns.push(self.attacks[next_attack].clone());
                next_attack += 1;
            }
            for c in &conns {
                if c.route == Route::Nat {
                    remotes.insert(c.remote);
                }
                if let Some(p) = c.profile {
                    *self
                        .profiles_by_network
                        .entry(u32::from(c.remote) >> 8)
                        .or_default() |= p.bit();
                    self.profiles_by_workload[c.workload] |= p.bit();
                }
                for r in self.records_of(c) {
                    push(&mut heap, &mut seq, self.settings.seed, r, end, batched);
                }
            }
            if benign && self.rng.random_bool(0.002) {
                let i = self.rng.random_range(0..self.interfaces.len()) as u32;
                push(
                    &mut heap,
                    &mut seq,
                    self.settings.seed,
                    status_record(i, t, Status::SkipData),
                    end,
                    batched,
                );
            }
            t += WINDOW;
            while heap.peek().is_some_and(|Reverse((d, _, _))| *d <= t) {
                if let Some(Reverse((d, _, r))) = heap.pop() {
                    self.deliver(format, &r, d, &mut line, &mut stats, &mut emit);
                }
            }
        }
        while let Some(Reverse((d, _, r))) = heap.pop() {
            self.deliver(format, &r, d, &mut line, &mut stats, &mut emit);
        }
        stats.distinct_remotes = remotes.len() as u64;
        stats
    }

    fn deliver(
        &mut self,
        format: &Format,
        r: &Rec,
        delivered_at: u64,
        line: &mut String,
        stats: &mut Stats,
        emit: &mut impl FnMut(&Delivered<'_>),
    ) {
        render(
            format,
            r,
            &self.settings,
            &self.interfaces[r.interface as usize],
            line,
        );
        stats.records += 1;
        match r.status {
            Status::NoData => stats.nodata_records += 1,
            Status::SkipData => stats.skipdata_records += 1,
            Status::Ok => {}
        }
        match r.label {
            Some(id) => {
                stats.malicious_records += 1;
                if let Some(l) = self.labels.iter_mut().find(|l| l.id == id) {
                    l.records += 1;
                }
            }
            None => stats.benign_records += 1,
        }
        emit(&Delivered {
            stream: &self.interfaces[r.interface as usize].stream,
            timestamp_ms: (r.start * 1_000) as i64,
            delivered_at,
            line,
            label: r.label,
        });
    }

    /// Every record AWS writes for one connection, window by window.
    fn records_of(&self, c: &Conn) -> Vec<Rec> {
        let w = &self.workloads[c.workload];
        let wl = c.workload as u32;
        let nat_if = self.workloads.len() as u32;
        let efs_if = nat_if + 1;
        let nat_ip = self.settings.network.nat_private_ip;
        let end = c.start + c.duration.max(1);
        let mut out = Vec::new();
        let mut ws = c.start / WINDOW * WINDOW;
        let total = c.duration.max(1) as f64;
        while ws < end {
            let s = c.start.max(ws);
            let e = end.min(ws + WINDOW);
            let share = (e - s).max(1) as f64 / total;
            let first = ws <= c.start;
            let last = end <= ws + WINDOW;
            let sent = ((c.sent as f64 * share) as u64).max(if first { 40 } else { 0 });
            let received = (c.received as f64 * share) as u64;
            let fin = if last { 1 } else { 0 };
            let out_flags = if first && c.opens { 2 | fin } else { fin };
            let in_flags = if first && c.opens { 18 | fin } else { fin };
            let base = Rec {
                interface: wl,
                start: s,
                end: e.max(s + 1),
                src: w.ip,
                dst: c.remote,
                src_port: c.local_port,
                dst_port: c.remote_port,
                protocol: c.protocol,
                packets: sent / 1_200 + 1,
                bytes: sent,
                reject: false,
                status: Status::Ok,
                pkt_src: w.ip,
                pkt_dst: c.remote,
                tcp_flags: if c.protocol == 6 { out_flags } else { 0 },
                egress: true,
                path: None,
                src_service: None,
                dst_service: None,
                label: c.label,
            };
            let reply = |mut r: Rec,
                         interface: u32,
                         src: Ipv4Addr,
                         dst: Ipv4Addr,
                         pkt_src: Ipv4Addr,
                         pkt_dst: Ipv4Addr,
                         egress: bool| {
                r.interface = interface;
                r.src = src;
                r.dst = dst;
                std::mem::swap(&mut r.src_port, &mut r.dst_port);
                r.pkt_src = pkt_src;
                r.pkt_dst = pkt_dst;
                r.bytes = received;
                r.packets = received / 1_200 + 1;
                r.tcp_flags = if c.protocol == 6 { in_flags } else { 0 };
                r.egress = egress;
                r.path = None;
                std::mem::swap(&mut r.src_service, &mut r.dst_service);
                r
            };
            match c.route {
                Route::Rejected => {
                    // Only the attempt, on the workload's interface.
                    out.push(Rec {
                        reject: true,
                        path: Some(1),
                        packets: 1,
                        bytes: sent.min(c.sent.max(40)),
                        ..base
                    });
                }
                Route::S3 => {
                    let o = Rec {
                        path: Some(2),
                        dst_service: Some("S3"),
                        ..base.clone()
                    };
                    out.push(reply(o.clone(), wl, c.remote, w.ip, c.remote, w.ip, false));
                    out.push(o);
                }
                Route::Intra => {
                    let o = Rec {
                        path: Some(1),
                        ..base.clone()
                    };
                    out.push(reply(o.clone(), wl, c.remote, w.ip, c.remote, w.ip, false));
                    let mut at_peer = o.clone();
                    at_peer.interface = efs_if;
                    at_peer.egress = false;
                    at_peer.path = None;
                    out.push(reply(
                        o.clone(),
                        efs_if,
                        c.remote,
                        w.ip,
                        c.remote,
                        w.ip,
                        true,
                    ));
                    out.push(at_peer);
                    out.push(o);
                }
                Route::Nat => {
                    let o = Rec {
                        path: Some(1),
                        ..base.clone()
                    };
                    // The workload's interface: to and from the remote.
                    out.push(reply(o.clone(), wl, c.remote, w.ip, c.remote, w.ip, false));
                    // NAT inner leg: workload -> NAT (packet addressed to the remote), and back.
                    let inner = Rec {
                        interface: nat_if,
                        dst: nat_ip,
                        egress: false,
                        path: None,
                        ..o.clone()
                    };
                    out.push(reply(
                        inner.clone(),
                        nat_if,
                        nat_ip,
                        w.ip,
                        c.remote,
                        w.ip,
                        true,
                    ));
                    out.push(inner);
                    // NAT outer leg: NAT -> remote from its own address and translated port.
                    let outer = Rec {
                        interface: nat_if,
                        src: nat_ip,
                        src_port: c.nat_port,
                        pkt_src: nat_ip,
                        path: Some(8),
                        ..o.clone()
                    };
                    let mut back = reply(
                        outer.clone(),
                        nat_if,
                        c.remote,
                        nat_ip,
                        c.remote,
                        nat_ip,
                        false,
                    );
                    back.dst_port = c.nat_port;
                    out.push(back);
                    out.push(outer);
                    out.push(o);
                }
            }
            ws += WINDOW;
        }
        out
    }
}

fn status_record(interface: u32, t: u64, status: Status) -> Rec {
    let zero = Ipv4Addr::UNSPECIFIED;
    Rec {
        interface,
        start: t,
        end: t + WINDOW,
        src: zero,
        dst: zero,
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        packets: 0,
        bytes: 0,
        reject: false,
        status,
        pkt_src: zero,
        pkt_dst: zero,
        tcp_flags: 0,
        egress: true,
        path: None,
        src_service: None,
        dst_service: None,
        label: None,
    }
}

/// Queues a record for delivery: each interface's window arrives together, 1 to 10 minutes
/// after it closed (mostly within 5), decided by a hash so it is the same for every record
/// of that interface and window. `batched`: each interface's five-minute batch of windows
/// arrives together 1 to 5 minutes after it closed, its records in any order, and one batch
/// in 30 another 10 to 30 minutes late.
fn push(
    heap: &mut BinaryHeap<Reverse<(u64, u64, Rec)>>,
    seq: &mut u64,
    seed: u64,
    r: Rec,
    end: u64,
    batched: bool,
) {
    if r.start >= end {
        return;
    }
    let mix = |mut h: u64| {
        h ^= h >> 31;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^ (h >> 29)
    };
    let window = r.start / WINDOW;
    *seq += 1;
    let (delivered, order) = if batched {
        let batch = window / 5;
        let h =
            mix(seed ^ (u64::from(r.interface) << 40) ^ batch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut delay = 60 + h % 240;
        if h % 30 == 7 {
            delay += 600 + (h >> 8) % 1_200;
        }
        ((batch + 1) * 5 * WINDOW + delay, mix(*seq ^ seed))
    } else {
        let h =
            mix(seed ^ (u64::from(r.interface) << 40) ^ window.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let delay = match h % 100 {
            0..=69 => 60 + h % 120,
            70..=97 => 180 + h % 120,
            _ => 300 + h % 300,
        };
        ((window + 1) * WINDOW + delay, *seq)
    };
    heap.push(Reverse((delivered, order, r)));
}

fn render(format: &Format, r: &Rec, s: &Settings, iface: &Interface, out: &mut String) {
    out.clear();
    let net = &s.network;
    let ok = r.status == Status::Ok;
    for (i, field) in format.fields().iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let dash = |out: &mut String| out.push('-');
        let _ = match field {
            Field::Version => write!(out, "{}", format.version().max(2)),
            Field::AccountId => write!(out, "{}", net.account_id),
            Field::InterfaceId => write!(out, "{}", iface.id),
            Field::Start => write!(out, "{}", r.start),
            Field::End => write!(out, "{}", r.end),
            Field::LogStatus => write!(
                out,
                "{}",
                match r.status {
                    Status::Ok => "OK",
                    Status::NoData => "NODATA",
                    Status::SkipData => "SKIPDATA",
                }
            ),
            _ if !ok => {
                dash(out);
                Ok(())
            }
            Field::SrcAddr => write!(out, "{}", r.src),
            Field::DstAddr => write!(out, "{}", r.dst),
            Field::SrcPort => write!(out, "{}", r.src_port),
            Field::DstPort => write!(out, "{}", r.dst_port),
            Field::Protocol => write!(out, "{}", r.protocol),
            Field::Packets => write!(out, "{}", r.packets),
            Field::Bytes => write!(out, "{}", r.bytes),
            Field::Action => out.write_str(if r.reject { "REJECT" } else { "ACCEPT" }),
            Field::VpcId => out.write_str(&net.vpc_id),
            Field::SubnetId => out.write_str(&iface.subnet_id),
            Field::TcpFlags => write!(out, "{}", r.tcp_flags),
            Field::Type => out.write_str("IPv4"),
            Field::PktSrcAddr => write!(out, "{}", r.pkt_src),
            Field::PktDstAddr => write!(out, "{}", r.pkt_dst),
            Field::Region => out.write_str(&net.region),
            Field::AzId => out.write_str(&iface.az_id),
            Field::PktSrcAwsService => out.write_str(r.src_service.unwrap_or("-")),
            Field::PktDstAwsService => out.write_str(r.dst_service.unwrap_or("-")),
            Field::FlowDirection => out.write_str(if r.egress { "egress" } else { "ingress" }),
            Field::TrafficPath => match r.path {
                Some(p) if r.egress => write!(out, "{p}"),
                _ => {
                    dash(out);
                    Ok(())
                }
            },
            _ => {
                dash(out);
                Ok(())
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog::{Decoder, Line, LogStatus};

    fn format() -> Format {
        Format::parse("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr region az-id pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path").unwrap()
    }

    fn settings(seed: u64) -> Settings {
        let mut s = Settings::new(seed, 1_764_000_000, 6 * 3_600);
        s.workloads = 5;
        s.selection = crate::Selection::parse("all").unwrap();
        s.attacks_after_seconds = 3_600;
        s
    }

    #[test]
    fn same_seed_same_records_and_every_line_parses() {
        let collect = |seed| {
            let mut sim = Simulator::new(settings(seed)).unwrap();
            let mut lines = Vec::new();
            let stats = sim.run(&format(), |d| {
                lines.push((d.delivered_at, d.line.to_string()))
            });
            (lines, stats, sim.labels().to_vec())
        };
        let (a, stats, labels) = collect(7);
        let (b, _, _) = collect(7);
        let (c, _, _) = collect(8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(stats.records as usize, a.len());
        assert_eq!(
            stats.records,
            stats.benign_records + stats.malicious_records
        );
        assert_eq!(labels.len(), Scenario::ATTACKS.len());
        assert_eq!(
            labels.iter().map(|l| l.records).sum::<u64>(),
            stats.malicious_records
        );
        assert!(
            labels.iter().all(|l| l.records > 0
                && (l.scenario.in_the_first_hour() || l.start >= 1_764_000_000 + 3_600 - 60)),
            "{labels:?}"
        );
        // Delivery order, and event times out of order but within AWS's bounds.
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut decoder = Decoder::pinned(format());
        let mut late = 0;
        let mut status = [0u64; 3];
        for (delivered, line) in &a {
            match decoder.decode(line.as_bytes()).unwrap() {
                Line::Record(r) => {
                    let end = r.end().unwrap();
                    // Five-minute batches, a few of them half an hour late.
                    assert!(*delivered >= end && *delivered <= end + 2_400, "{line}");
                    if *delivered > end + 900 {
                        late += 1;
                    }
                    match r.log_status() {
                        Some(LogStatus::Ok) => status[0] += 1,
                        Some(LogStatus::NoData) => status[1] += 1,
                        _ => status[2] += 1,
                    }
                }
                other => panic!("not a record: {line} {other:?}"),
            }
        }
        assert!(late > 0);
        assert_eq!(status[1], stats.nodata_records);
        assert_eq!(status[2], stats.skipdata_records);
        assert!(stats.nodata_records > 0);
    }

    #[test]
    fn a_nat_connection_appears_on_three_interfaces_with_aws_addresses() {
        let mut s = settings(1);
        s.selection = crate::Selection::parse("ssh-exfil").unwrap();
        s.workloads = 1;
        let mut sim = Simulator::new(s.clone()).unwrap();
        let label = sim.labels()[0].clone();
        let mut by_stream: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        sim.run(&format(), |d| {
            by_stream
                .entry(d.stream.to_string())
                .or_default()
                .push(d.line.to_string())
        });
        assert_eq!(by_stream.len(), 2, "workload and NAT interfaces");
        let nat = &by_stream[&format!("{}-all", s.network.nat_interface_id)];
        let remote = label.remotes[0].to_string();
        let nat_ip = s.network.nat_private_ip.to_string();
        let wl = label.workload.to_string();
        // Inner leg: workload -> NAT address, packet destination the remote, port 22.
        assert!(nat.iter().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f[3] == wl && f[4] == nat_ip && f[6] == "22" && f[20] == remote && f[17] == "2"
        }));
        // Outer leg: NAT address -> remote.
        assert!(nat.iter().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f[3] == nat_ip && f[4] == remote && f[6] == "22"
        }));
        // Bytes sent on the inner leg add up to the attack's upload.
        let sent: u64 = nat
            .iter()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f[3] == wl && f[4] == nat_ip)
            .map(|f| f[9].parse::<u64>().unwrap())
            .sum();
        assert!(sent >= 150_000_000, "{sent}");
    }

    #[test]
    fn errors_name_the_problem() {
        let mut s = settings(1);
        s.workloads = 0;
        assert!(Simulator::new(s)
            .err()
            .unwrap()
            .contains("at least one workload"));
        let mut s = settings(1);
        s.duration_seconds = 10;
        assert!(Simulator::new(s).err().unwrap().contains("one minute"));
        assert!(crate::Selection::parse("beaconing,nope")
            .unwrap_err()
            .contains("`nope`"));
        assert!(crate::Selection::parse("beaconing=2")
            .unwrap_err()
            .contains("only benign profiles take a rate"));
        assert!(crate::Selection::parse("heartbeats=x")
            .unwrap_err()
            .contains("must be a number"));
        let attacks = crate::Selection::parse("attacks").unwrap();
        assert_eq!(attacks.attacks.len(), Scenario::ATTACKS.len());
        assert!(!attacks.benign());
        let some = crate::Selection::parse("heartbeats=2,git-push").unwrap();
        assert_eq!(some.rate(Profile::Heartbeats), 2.0);
        assert_eq!(some.rate(Profile::GitPush), 1.0);
        assert_eq!(some.rate(Profile::DailyWork), 0.0);
    }
}
