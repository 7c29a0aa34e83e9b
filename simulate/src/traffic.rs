//! What the workloads do, as connections: the benign fleet minute by minute, and each attack
//! scheduled up front with its ground truth. Connections become records in `records`.

use std::net::Ipv4Addr;

use rand::RngExt;
use rand_distr::{Distribution, LogNormal, Poisson};
use rand_pcg::Pcg64Mcg;

use crate::{Profile, Scenario, Selection};

/// Where a connection's packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Out through the NAT gateway (accepted).
    Nat,
    /// Refused by the security group on the workload's interface.
    Rejected,
    /// To S3 through the gateway endpoint.
    S3,
    /// To another address inside the VPC (EFS).
    Intra,
}

#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub workload: usize,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub local_port: u16,
    pub nat_port: u16,
    pub protocol: u8,
    pub start: u64,
    pub duration: u64,
    pub sent: u64,
    pub received: u64,
    pub route: Route,
    /// Whether the first window carries the connection's SYN (false for a long-lived
    /// connection already open when it enters the simulation).
    pub opens: bool,
    pub label: Option<u32>,
    /// The benign profile it belongs to (None for attacks).
    pub profile: Option<Profile>,
}

/// One data scientist's workload and its habits.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub ip: Ipv4Addr,
    pub interface_id: String,
    /// How busy this person is, around 1.
    pub scale: f64,
    /// Hours east of UTC.
    pub utc_offset_hours: i64,
    pub works_weekends: bool,
    pub tracks_experiments: bool,
}

impl Workload {
    /// Relative activity at `t`: office hours, evenings, nights and weekends.
    pub fn activity(&self, t: u64) -> f64 {
        let local = t as i64 + self.utc_offset_hours * 3_600;
        let hour = local.rem_euclid(86_400) / 3_600;
        // 1970-01-01 was a Thursday: +3 makes Monday 0.
        let weekday = (local.div_euclid(86_400) + 3).rem_euclid(7);
        let by_hour = match hour {
            9..=17 => 1.0,
            8 | 18 => 0.6,
            19..=22 => 0.25,
            _ => 0.04,
        };
        let by_day = if weekday >= 5 {
            if self.works_weekends {
                0.5
            } else {
                0.08
            }
        } else {
            1.0
        };
        by_hour * by_day * self.scale
    }
}

/// A fixed pool of addresses standing for one service's front ends.
fn pool(first: u8, second: u8, n: u8) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(first, second, i.wrapping_mul(37), 10 + i))
        .collect()
}

/// The services data scientists' work talks to, by role.
pub(crate) struct Services {
    pub pypi: Vec<Ipv4Addr>,
    pub conda: Vec<Ipv4Addr>,
    pub github: Vec<Ipv4Addr>,
    pub models: Vec<Ipv4Addr>,
    pub apis: Vec<Ipv4Addr>,
    pub tracking: Vec<Ipv4Addr>,
    /// The team's own shared service (results store, wiki): one small network.
    pub team_share: Vec<Ipv4Addr>,
    /// A monitoring vendor's intake addresses.
    pub monitoring: Vec<Ipv4Addr>,
    /// An update service answering from any address of two networks.
    pub updates: Vec<[u8; 3]>,
    /// Cloud object storage reached through the NAT (another region, another provider):
    /// every request may land on another address, within a few /24s.
    pub storage: Vec<[u8; 3]>,
}

impl Services {
    pub fn new() -> Self {
        Services {
            pypi: pool(151, 101, 8),
            conda: pool(104, 17, 6),
            github: pool(140, 82, 6),
            models: pool(13, 224, 8),
            apis: pool(34, 117, 12),
            tracking: pool(35, 186, 2),
            team_share: vec![
                Ipv4Addr::new(18, 204, 77, 20),
                Ipv4Addr::new(18, 204, 77, 21),
                Ipv4Addr::new(18, 204, 77, 36),
            ],
            monitoring: pool(3, 233, 3),
            updates: vec![[199, 232, 64], [199, 232, 65]],
            storage: vec![[52, 219, 40], [52, 219, 121], [3, 5, 140]],
        }
    }
}

/// First octets the long tail of benign destinations is drawn from: public ranges of large
/// hosting and CDN providers, none of them used for attacks here.
const LONG_TAIL_FIRST_OCTETS: [u8; 16] = [
    3, 18, 23, 34, 35, 44, 54, 64, 72, 99, 104, 142, 151, 162, 172, 216,
];

pub(crate) fn long_tail_address(rng: &mut Pcg64Mcg) -> Ipv4Addr {
    let first = LONG_TAIL_FIRST_OCTETS[rng.random_range(0..LONG_TAIL_FIRST_OCTETS.len())];
    // 172 is public only from 172.32 up.
    let second = if first == 172 {
        rng.random_range(32..=255)
    } else {
        rng.random_range(0..=255)
    };
    Ipv4Addr::new(first, second, rng.random(), rng.random_range(1..=254))
}

/// Addresses attacks send to that are on no list: fresh hosting addresses.
fn attacker_address(rng: &mut Pcg64Mcg) -> Ipv4Addr {
    Ipv4Addr::new(
        185,
        rng.random_range(100..150),
        rng.random(),
        rng.random_range(1..=254),
    )
}

/// Ranges the simulated threat-intelligence list names (plain CIDR per line).
const THREAT_CIDRS: [[u8; 3]; 4] = [[45, 134, 26], [5, 188, 206], [194, 26, 29], [193, 32, 162]];

/// Tor relays the simulated Tor list names.
fn tor_relay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(185, 220, 101, 1 + i % 64)
}

/// The deny list that goes with the `denylisted` scenario, one CIDR per line.
pub fn threat_list() -> String {
    let mut s = String::from(
        "# egresswatch simulate: threat-intelligence ranges used by the denylisted scenario\n",
    );
    for c in THREAT_CIDRS {
        s.push_str(&format!("{}.{}.{}.0/24\n", c[0], c[1], c[2]));
    }
    s
}

/// The Tor list that goes with the `tor` scenario, in the exit-list format.
pub fn tor_exit_list() -> String {
    let mut s = String::new();
    for i in 0..64u8 {
        s.push_str(&format!(
            "ExitNode {:040X}\nPublished 2026-11-01 00:00:00\nLastStatus 2026-11-01 00:00:00\nExitAddress {} 2026-11-01 00:00:00\n",
            u64::from(i) * 0x1F3D_5B79,
            tor_relay(i)
        ));
    }
    s
}

fn lognormal(rng: &mut Pcg64Mcg, median: f64, sigma: f64, cap: f64) -> u64 {
    let d = LogNormal::new(median.ln(), sigma).expect("valid lognormal");
    d.sample(rng).min(cap).max(1.0) as u64
}

fn poisson(rng: &mut Pcg64Mcg, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean).map_or(0, |d| d.sample(rng) as u64)
}

fn ephemeral(rng: &mut Pcg64Mcg) -> u16 {
    rng.random_range(32_768..61_000)
}

#[allow(clippy::too_many_arguments)]
fn https(
    rng: &mut Pcg64Mcg,
    workload: usize,
    remote: Ipv4Addr,
    start: u64,
    sent: u64,
    received: u64,
    bytes_per_second: f64,
    label: Option<u32>,
) -> Conn {
    let duration = 1 + ((sent + received) as f64 / bytes_per_second) as u64;
    Conn {
        workload,
        remote,
        remote_port: 443,
        local_port: ephemeral(rng),
        nat_port: rng.random_range(1_024..65_535),
        protocol: 6,
        start,
        duration,
        sent,
        received,
        route: Route::Nat,
        opens: true,
        label,
        profile: None,
    }
}

/// What the fleet's workloads talk to.
pub(crate) struct Surroundings<'a> {
    pub services: &'a Services,
    pub efs: Ipv4Addr,
    pub s3: &'a [Ipv4Addr],
    /// Fresh internet destinations per workload per active hour.
    pub new_destinations_per_hour: f64,
    pub selection: &'a Selection,
}

/// Seconds into its day, at the workload's local time.
fn local_second_of_day(w: &Workload, t: u64) -> u64 {
    (t as i64 + w.utc_offset_hours * 3_600).rem_euclid(86_400) as u64
}

/// The benign connections `w` (number `index`) starts in the minute beginning at `t`, each
/// tagged with the profile it belongs to.
pub(crate) fn benign_minute(
    rng: &mut Pcg64Mcg,
    around: &Surroundings<'_>,
    w: &Workload,
    index: usize,
    t: u64,
    out: &mut Vec<Conn>,
) {
    let (services, efs, s3) = (around.services, around.efs, around.s3);
    let rate = |p: Profile| around.selection.rate(p);
    let a = w.activity(t);
    let per_minute = |per_hour: f64| per_hour * a / 60.0;
    let at = |rng: &mut Pcg64Mcg| t + rng.random_range(0..60);
    let pick = |rng: &mut Pcg64Mcg, p: &[Ipv4Addr]| p[rng.random_range(0..p.len())];
    let tagged = |mut c: Conn, p: Profile| {
        c.profile = Some(p);
        c
    };
    let storage_host = |rng: &mut Pcg64Mcg| {
        let [a, b, c] = services.storage[rng.random_range(0..services.storage.len())];
        Ipv4Addr::new(a, b, c, rng.random_range(1..=254))
    };

    let daily = rate(Profile::DailyWork);
    if daily > 0.0 {
        let p = Profile::DailyWork;
        // Package installs: a burst of downloads from one or two CDN front ends.
        for (per_hour, pool, median) in [(0.8, &services.pypi, 300e3), (0.2, &services.conda, 4e6)]
        {
            for _ in 0..poisson(rng, per_minute(per_hour * daily)) {
                let front = [pick(rng, pool), pick(rng, pool)];
                let begin = at(rng);
                for _ in 0..rng.random_range(3..30) {
                    let received = lognormal(rng, median, 1.5, 800e6);
                    let sent = rng.random_range(800..4_000);
                    let start = begin + rng.random_range(0..90);
                    let r = front[rng.random_range(0..2)];
                    out.push(tagged(
                        https(rng, index, r, start, sent, received, 25e6, None),
                        p,
                    ));
                }
            }
        }
        // Git fetches.
        for _ in 0..poisson(rng, per_minute(0.3 * daily)) {
            let received = lognormal(rng, 2e6, 1.5, 2e9);
            let sent = rng.random_range(2_000..20_000);
            let (r, s) = (pick(rng, &services.github), at(rng));
            out.push(tagged(
                https(rng, index, r, s, sent, received, 15e6, None),
                p,
            ));
        }
        // API calls to SaaS services.
        for _ in 0..poisson(rng, per_minute(8.0 * daily)) {
            let sent = rng.random_range(1_000..40_000);
            let received = rng.random_range(1_000..60_000);
            let (r, s) = (pick(rng, &services.apis), at(rng));
            out.push(tagged(
                https(rng, index, r, s, sent, received, 2e6, None),
                p,
            ));
        }
        // The team's shared service (a results store, a wiki), used all day by everyone.
        for _ in 0..poisson(rng, per_minute(2.0 * daily)) {
            let sent = rng.random_range(2_000..2_000_000);
            let received = rng.random_range(2_000..400_000);
            let (r, s) = (pick(rng, &services.team_share), at(rng));
            out.push(tagged(
                https(rng, index, r, s, sent, received, 5e6, None),
                p,
            ));
        }
        // The long tail: documentation sites, dataset hosts, one-off downloads.
        for _ in 0..poisson(rng, per_minute(around.new_destinations_per_hour * daily)) {
            let received = lognormal(rng, 100e3, 2.0, 500e6);
            let sent = rng.random_range(1_000..12_000);
            let (r, s) = (long_tail_address(rng), at(rng));
            out.push(tagged(
                https(rng, index, r, s, sent, received, 10e6, None),
                p,
            ));
        }
        // The home directory on EFS, busy while the person works.
        if a > 0.2 {
            out.push(Conn {
                workload: index,
                remote: efs,
                remote_port: 2049,
                local_port: 1_000 + (index % 20) as u16,
                nat_port: 0,
                protocol: 6,
                start: t,
                duration: 59,
                sent: lognormal(rng, 200e3, 1.5, 200e6),
                received: lognormal(rng, 500e3, 1.5, 500e6),
                route: Route::Intra,
                opens: false,
                label: None,
                profile: Some(p),
            });
        }
    }

    let beats = rate(Profile::Heartbeats);
    if beats > 0.0 {
        let p = Profile::Heartbeats;
        // The monitoring agent: a new connection every 2 to 5 minutes (fixed per workload),
        // around the clock, to one of the vendor's intake addresses.
        let every_minutes = (2 + index % 4) as u64;
        if (t / 60 + index as u64).is_multiple_of(every_minutes) && rng.random_bool(beats.min(1.0))
        {
            let s = t + (index as u64 * 7) % 60;
            let sent = rng.random_range(2_000..9_000);
            let r = pick(rng, &services.monitoring);
            out.push(tagged(https(rng, index, r, s, sent, 1_200, 1e6, None), p));
        }
        // An hourly update check at a minute of its own, answered by any address of the
        // vendor's two networks.
        let second_of_hour = t % 3_600;
        if second_of_hour == (index as u64 * 13 % 60) * 60 && rng.random_bool(beats.min(1.0)) {
            let [x, y, z] = services.updates[rng.random_range(0..services.updates.len())];
            let r = Ipv4Addr::new(x, y, z, rng.random_range(1..=254));
            let s = t + rng.random_range(0..60);
            out.push(tagged(https(rng, index, r, s, 900, 4_000, 1e6, None), p));
        }
        // Experiment tracking: one long-lived connection per active hour, a little each minute.
        if w.tracks_experiments && a > 0.3 && t.is_multiple_of(3_600) {
            let r = services.tracking[index % services.tracking.len()];
            let s = t + rng.random_range(0..60);
            let mut c = https(rng, index, r, s, 0, 0, 1.0, None);
            c.duration = 3_500;
            c.sent = (rng.random_range(300_000..3_000_000) as f64 * beats) as u64;
            c.received = c.sent / 4;
            out.push(tagged(c, p));
        }
    }

    let polling = rate(Profile::ApiPolling);
    if polling > 0.0 && index % 25 == 7 {
        // A job polling one popular API every 30 to 300 seconds, day and night.
        let interval = 30 + (index as u64 * 37) % 271;
        let interval = ((interval as f64 / polling) as u64).max(5);
        let r = services.apis[index % services.apis.len()];
        let phase = index as u64 % interval;
        let mut s = t + (interval - (t + interval - phase) % interval) % interval;
        while s < t + 60 {
            let sent = rng.random_range(700..1_100);
            let received = rng.random_range(1_500..30_000);
            out.push(tagged(
                https(rng, index, r, s, sent, received, 2e6, None),
                Profile::ApiPolling,
            ));
            s += interval;
        }
    }

    let downloads = rate(Profile::LargeDownloads);
    for _ in 0..poisson(rng, per_minute(0.08 * downloads)) {
        let received = lognormal(rng, 500e6, 1.0, 12e9);
        let sent = rng.random_range(20_000..120_000);
        let speed = rng.random_range(30e6..150e6);
        let (r, s) = (pick(rng, &services.models), at(rng));
        let c = https(rng, index, r, s, sent, received, speed, None);
        out.push(tagged(c, Profile::LargeDownloads));
    }

    // Cloud storage through the NAT, each request to whichever address the provider picks
    // within its networks.
    let storage = rate(Profile::CloudStorage);
    for _ in 0..poisson(rng, per_minute(0.5 * storage)) {
        let received = lognormal(rng, 40e6, 1.2, 4e9);
        let sent = rng.random_range(4_000..40_000);
        let (r, s) = (storage_host(rng), at(rng));
        let c = https(rng, index, r, s, sent, received, 60e6, None);
        out.push(tagged(c, Profile::CloudStorage));
    }
    let checkpoints = rate(Profile::CheckpointUploads);
    if index.is_multiple_of(4) {
        for _ in 0..poisson(rng, per_minute(2.0 * checkpoints)) {
            let sent = lognormal(rng, 300e6, 0.8, 3e9);
            let received = rng.random_range(20_000..200_000);
            let (r, s) = (storage_host(rng), at(rng));
            let c = https(rng, index, r, s, sent, received, 80e6, None);
            out.push(tagged(c, Profile::CheckpointUploads));
        }
    }

    let nightly = rate(Profile::NightlyUpload);
    if nightly > 0.0 && index % 7 == 2 && local_second_of_day(w, t) == 2 * 3_600 {
        // Four parallel streams of a 1-4 GB export to the team's shared service.
        let total = rng.random_range(1e9..4e9) * nightly;
        for _ in 0..4 {
            let sent = (total / 4.0) as u64;
            let received = sent / 500;
            let (r, s) = (pick(rng, &services.team_share), at(rng));
            let c = https(rng, index, r, s, sent, received, 20e6, None);
            out.push(tagged(c, Profile::NightlyUpload));
        }
    }

    let pushes = rate(Profile::GitPush);
    for _ in 0..poisson(rng, per_minute(0.15 * pushes)) {
        // A burst: a few pushes within minutes, now and then one with large files.
        let begin = at(rng);
        for i in 0..rng.random_range(2..8u64) {
            let sent = lognormal(rng, 400e3, 1.8, 80e6);
            let received = rng.random_range(10_000..60_000);
            let r = pick(rng, &services.github);
            let s = begin + i * rng.random_range(5..90);
            let c = https(rng, index, r, s, sent, received, 5e6, None);
            out.push(tagged(c, Profile::GitPush));
        }
    }

    let s3_rate = rate(Profile::S3Endpoint);
    if s3_rate > 0.0 {
        let p = Profile::S3Endpoint;
        let via_s3 = |rng: &mut Pcg64Mcg, sent: u64, received: u64, s: u64| {
            let r = s3[rng.random_range(0..s3.len())];
            let mut c = https(rng, index, r, s, sent, received, 80e6, None);
            c.route = Route::S3;
            c.profile = Some(p);
            c
        };
        // Reads and small writes while the person works.
        for _ in 0..poisson(rng, per_minute(3.0 * s3_rate)) {
            let sent = lognormal(rng, 2e6, 1.5, 500e6);
            let received = lognormal(rng, 5e6, 2.0, 5e9);
            let s = at(rng);
            out.push(via_s3(rng, sent, received, s));
        }
        // Now and then a dataset of gigabytes saved.
        for _ in 0..poisson(rng, per_minute(0.01 * s3_rate)) {
            let sent = rng.random_range(1e9..5e9) as u64;
            let s = at(rng);
            out.push(via_s3(rng, sent, 200_000, s));
        }
        // A pipeline writing 1-3 GB every hour, around the clock.
        if index % 10 == 3 {
            let hourly = 1e9 + 2e9 * ((index * 7919) % 100) as f64 / 100.0;
            for _ in 0..poisson(rng, 30.0 * s3_rate / 60.0) {
                let sent = lognormal(rng, hourly / 30.0, 0.5, 2e9);
                let s = at(rng);
                out.push(via_s3(rng, sent, 20_000, s));
            }
        }
    }
}

/// One scheduled attack: its connections and the remotes and port it uses.
pub(crate) struct Attack {
    pub conns: Vec<Conn>,
    /// Other workloads that take part.
    pub accomplices: Vec<usize>,
    pub remotes: Vec<Ipv4Addr>,
    pub remote_port: Option<u16>,
}

fn probe(
    workload: usize,
    remote: Ipv4Addr,
    port: u16,
    start: u64,
    route: Route,
    label: u32,
    rng: &mut Pcg64Mcg,
) -> Conn {
    Conn {
        workload,
        remote,
        remote_port: port,
        local_port: ephemeral(rng),
        nat_port: rng.random_range(1_024..65_535),
        protocol: 6,
        start,
        duration: 1,
        sent: 60,
        received: if route == Route::Nat { 40 } else { 0 },
        route,
        opens: true,
        label: Some(label),
        profile: None,
    }
}

/// The connections of one attack of `scenario` by workload `w` (of `workloads`), starting
/// at `start` and ending by `end`; `s3` are the addresses the gateway endpoint routes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attack(
    rng: &mut Pcg64Mcg,
    scenario: Scenario,
    w: usize,
    workloads: usize,
    s3: &[Ipv4Addr],
    start: u64,
    end: u64,
    label: u32,
) -> Attack {
    let mut conns = Vec::new();
    let l = Some(label);
    let single = |remotes: Vec<Ipv4Addr>, port: u16, conns: Vec<Conn>| Attack {
        conns,
        accomplices: Vec::new(),
        remotes,
        remote_port: Some(port),
    };
    match scenario {
        Scenario::SshExfil => {
            let r = attacker_address(rng);
            let mut t = start;
            for _ in 0..rng.random_range(1..=3) {
                let sent = rng.random_range(150_000_000..600_000_000);
                let speed = rng.random_range(1e6..4e6);
                let mut c = https(rng, w, r, t, sent, sent / 100, speed, l);
                c.remote_port = 22;
                t += c.duration + rng.random_range(30..300);
                conns.push(c);
            }
            single(vec![r], 22, conns)
        }
        Scenario::HttpsUpload => {
            let r = attacker_address(rng);
            let total: u64 = rng.random_range(1_500_000_000..4_000_000_000);
            let parallel = rng.random_range(2..=4);
            for _ in 0..parallel {
                let sent = total / parallel;
                let s = start + rng.random_range(0..20);
                let speed = rng.random_range(1.5e6..3e6);
                conns.push(https(rng, w, r, s, sent, sent / 200, speed, l));
            }
            single(vec![r], 443, conns)
        }
        Scenario::SprayUpload => {
            // 30 to 80 parts of 2 to 6 MB, one host of the network each, a few seconds apart.
            let base = attacker_address(rng).octets();
            let parts = rng.random_range(30..80u8);
            let mut remotes = Vec::new();
            let mut t = start;
            for i in 0..parts {
                let r = Ipv4Addr::new(base[0], base[1], base[2], 1 + i.wrapping_mul(3) % 250);
                remotes.push(r);
                let sent = rng.random_range(2_000_000..6_000_000);
                conns.push(https(rng, w, r, t, sent, sent / 300, 3e6, l));
                t += rng.random_range(5..40);
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::SlowDrip => {
            let r = attacker_address(rng);
            let mut t = start;
            let stop = (start + 10 * 3_600).min(end);
            while t < stop {
                let sent = rng.random_range(2_000_000..4_000_000);
                let received = rng.random_range(5_000..20_000);
                conns.push(https(rng, w, r, t, sent, received, 2e6, l));
                t += rng.random_range(240..360);
            }
            single(vec![r], 443, conns)
        }
        Scenario::Beaconing => {
            let r = attacker_address(rng);
            let period: f64 = rng.random_range(60.0..300.0);
            let size: f64 = rng.random_range(300.0..700.0);
            let mut t = start as f64;
            let stop = (start + 8 * 3_600).min(end) as f64;
            while t < stop {
                let sent = (size * rng.random_range(0.97..1.03)) as u64;
                let received = rng.random_range(200..2_000);
                conns.push(https(rng, w, r, t as u64, sent, received, 1e6, l));
                t += period * rng.random_range(0.92..1.08);
            }
            single(vec![r], 443, conns)
        }
        Scenario::PortScan => {
            let r = attacker_address(rng);
            let ports = rng.random_range(200..1_000u32);
            let span = rng.random_range(120..240u64);
            for i in 0..ports {
                let port = 1 + (i * 7 + 1) as u16;
                if port == 443 {
                    continue;
                }
                let s = start + u64::from(i) * span / u64::from(ports);
                conns.push(probe(w, r, port, s, Route::Rejected, label, rng));
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes: vec![r],
                remote_port: None,
            }
        }
        Scenario::PortSweep => {
            let hosts = rng.random_range(150..400u32);
            let (a, b) = (rng.random_range(60..90u8), rng.random());
            let mut remotes = Vec::new();
            for i in 0..hosts {
                let r = Ipv4Addr::new(a, b, (i / 250) as u8, (i % 250) as u8 + 1);
                remotes.push(r);
                let s = start + u64::from(i) * 150 / u64::from(hosts);
                conns.push(probe(w, r, 443, s, Route::Nat, label, rng));
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::Denylisted => {
            let c = THREAT_CIDRS[rng.random_range(0..THREAT_CIDRS.len())];
            let r = Ipv4Addr::new(c[0], c[1], c[2], rng.random_range(1..=254));
            for i in 0..rng.random_range(2..6u64) {
                let sent = rng.random_range(2_000..200_000);
                let s = start + i * rng.random_range(30..600);
                conns.push(https(rng, w, r, s, sent, 4_000, 1e6, l));
            }
            single(vec![r], 443, conns)
        }
        Scenario::Tor => {
            let relays: Vec<Ipv4Addr> = (0..3).map(|_| tor_relay(rng.random())).collect();
            for (i, r) in relays.iter().enumerate() {
                conns.push(probe(
                    w,
                    *r,
                    9001,
                    start + i as u64 * 20,
                    Route::Rejected,
                    label,
                    rng,
                ));
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes: relays,
                remote_port: Some(9001),
            }
        }
        Scenario::DnsOutside => {
            let r = [Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(1, 1, 1, 1)][rng.random_range(0..2)];
            for i in 0..rng.random_range(3..20u64) {
                let mut c = probe(
                    w,
                    r,
                    53,
                    start + i * rng.random_range(1..60),
                    Route::Rejected,
                    label,
                    rng,
                );
                c.protocol = 17;
                c.sent = rng.random_range(60..120);
                conns.push(c);
            }
            single(vec![r], 53, conns)
        }
        Scenario::DnsOverHttps => {
            // A resolver that answers DoH, queried the way a stub resolver does: a small
            // request and answer on a fresh connection every few tens of seconds.
            let r = [
                Ipv4Addr::new(1, 1, 1, 1),
                Ipv4Addr::new(8, 8, 8, 8),
                Ipv4Addr::new(9, 9, 9, 9),
                Ipv4Addr::new(94, 140, 14, 14),
            ][rng.random_range(0..4)];
            let mut t = start;
            for _ in 0..rng.random_range(5..40) {
                let sent = rng.random_range(600..2_500);
                let received = rng.random_range(800..4_000);
                conns.push(https(rng, w, r, t, sent, received, 1e6, l));
                t += rng.random_range(10..120);
            }
            single(vec![r], 443, conns)
        }
        Scenario::SplitUpload => {
            // Three to six workloads each send 15-120 MB in one to three connections to one
            // new address within two hours: no single workload sends much.
            let r = attacker_address(rng);
            let mut accomplices: Vec<usize> = Vec::new();
            let helpers = rng.random_range(2..6usize).min(workloads.saturating_sub(1));
            while accomplices.len() < helpers {
                let other = rng.random_range(0..workloads);
                if other != w && !accomplices.contains(&other) {
                    accomplices.push(other);
                }
            }
            // Within two hours, or what is left of the run.
            let within = end
                .saturating_sub(start)
                .min(7_200)
                .saturating_sub(900)
                .max(1);
            for part in std::iter::once(w).chain(accomplices.iter().copied()) {
                let s0 = start + rng.random_range(0..within);
                for i in 0..rng.random_range(1..=3u64) {
                    let sent = rng.random_range(15_000_000..120_000_000) / (i + 1);
                    let s = s0 + i * rng.random_range(60..900);
                    conns.push(https(rng, part, r, s, sent, sent / 150, 2e6, l));
                }
            }
            Attack {
                conns,
                accomplices,
                remotes: vec![r],
                remote_port: Some(443),
            }
        }
        Scenario::S3Exfil => {
            // 15-40 GB to a bucket of the attacker's through the gateway endpoint, in
            // parallel parts over 20 to 60 minutes.
            let total: f64 = rng.random_range(15e9..40e9);
            let minutes = rng.random_range(20..=60u64);
            let parts = minutes / 2;
            let mut remotes = Vec::new();
            for i in 0..parts {
                let r = s3[rng.random_range(0..s3.len())];
                if !remotes.contains(&r) {
                    remotes.push(r);
                }
                let sent = (total / parts as f64) as u64;
                let s = start + i * 120 + rng.random_range(0..30);
                let mut c = https(rng, w, r, s, sent, sent / 1_000, 60e6, l);
                c.route = Route::S3;
                conns.push(c);
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::JitteredBeacon | Scenario::LongBeacon => {
            // Jitter as C2 frameworks apply it: either the sleep shortened by up to j
            // (Cobalt Strike's way) or spread both ways by j; sizes vary around a median.
            let r = attacker_address(rng);
            let (period, jitter, hours): (f64, f64, u64) = if scenario == Scenario::LongBeacon {
                (
                    rng.random_range(600.0..3_600.0),
                    rng.random_range(0.0..0.2),
                    24,
                )
            } else {
                (
                    rng.random_range(60.0..600.0),
                    rng.random_range(0.1..0.5),
                    rng.random_range(8..13),
                )
            };
            let downward = rng.random_bool(0.5);
            let median_size: f64 = rng.random_range(300.0..3_000.0);
            let mut t = start as f64;
            let stop = (start + hours * 3_600).min(end) as f64;
            while t < stop {
                let sent = lognormal(rng, median_size, 0.4, 60_000.0);
                let received = lognormal(rng, 800.0, 0.8, 500_000.0);
                conns.push(https(rng, w, r, t as u64, sent, received, 1e6, l));
                let factor = if downward {
                    1.0 - rng.random_range(0.0..=jitter)
                } else {
                    1.0 + rng.random_range(-jitter..=jitter)
                };
                t += period * factor;
            }
            single(vec![r], 443, conns)
        }
        Scenario::DnsOverTls => {
            let r = [
                Ipv4Addr::new(1, 0, 0, 1),
                Ipv4Addr::new(8, 8, 4, 4),
                Ipv4Addr::new(9, 9, 9, 9),
            ][rng.random_range(0..3)];
            let mut t = start;
            for _ in 0..rng.random_range(3..30) {
                conns.push(probe(w, r, 853, t, Route::Rejected, label, rng));
                t += rng.random_range(5..90);
            }
            single(vec![r], 853, conns)
        }
        Scenario::BlockedTunnel => {
            // An ICMP tunnel tried, then UDP to 443 (QUIC-shaped): both rejected.
            let r = attacker_address(rng);
            let mut t = start;
            for i in 0..rng.random_range(20..120u32) {
                let (protocol, port) = if i % 3 == 0 { (17, 443) } else { (1, 0) };
                let mut c = probe(w, r, port, t, Route::Rejected, label, rng);
                c.protocol = protocol;
                c.sent = rng.random_range(64..1_200);
                if protocol == 1 {
                    c.local_port = 0;
                }
                conns.push(c);
                t += rng.random_range(1..20);
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes: vec![r],
                remote_port: None,
            }
        }
        Scenario::SharedStorageUpload => {
            // 4-8 GB in parts of 50-300 MB over one to two hours, each part to whichever
            // address of the storage network answers.
            let base = Services::new().storage[rng.random_range(0..3)];
            let total: u64 = rng.random_range(4_000_000_000..8_000_000_000);
            let span = rng.random_range(3_600..7_200u64);
            let mut remotes = Vec::new();
            let mut sent_so_far = 0u64;
            let mut t = start;
            while sent_so_far < total {
                let r = Ipv4Addr::new(base[0], base[1], base[2], rng.random_range(1..=254));
                if !remotes.contains(&r) {
                    remotes.push(r);
                }
                let sent = rng.random_range(50_000_000..300_000_000u64);
                sent_so_far += sent;
                conns.push(https(rng, w, r, t, sent, sent / 400, 40e6, l));
                t += span * sent / total;
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::S3UnderFloor => {
            // 45 MB every six minutes: 450 MB an hour for four hours.
            let mut remotes = Vec::new();
            for i in 0..40u64 {
                let r = s3[rng.random_range(0..s3.len())];
                if !remotes.contains(&r) {
                    remotes.push(r);
                }
                let s = start + i * 360 + rng.random_range(0..30);
                let mut c = https(rng, w, r, s, 45_000_000, 45_000, 30e6, l);
                c.route = Route::S3;
                conns.push(c);
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::SlowRamp => {
            // Hour k sends 20 MB x 1.3^k in parts of at most 100 MB, for 24 hours.
            let base = Services::new().storage[rng.random_range(0..3)];
            let mut remotes = Vec::new();
            let mut hourly = 20e6f64;
            for hour in 0..24u64 {
                let parts = (hourly / 100e6).ceil().max(1.0) as u64;
                for p in 0..parts {
                    let r = Ipv4Addr::new(base[0], base[1], base[2], rng.random_range(1..=254));
                    if !remotes.contains(&r) {
                        remotes.push(r);
                    }
                    let sent = (hourly / parts as f64) as u64;
                    let s = start + hour * 3_600 + p * 3_600 / parts;
                    conns.push(https(rng, w, r, s, sent, sent / 400, 20e6, l));
                }
                hourly *= 1.3;
            }
            Attack {
                conns,
                accomplices: Vec::new(),
                remotes,
                remote_port: Some(443),
            }
        }
        Scenario::SparseBeacon => {
            let r = attacker_address(rng);
            for i in 0..7u64 {
                let s = start + i * 600 + rng.random_range(0..20);
                let sent = rng.random_range(300..700);
                let received = rng.random_range(200..900);
                conns.push(https(rng, w, r, s, sent, received, 1e6, l));
            }
            single(vec![r], 443, conns)
        }
        Scenario::FirstDayBeacon => {
            let r = attacker_address(rng);
            let mut t = start as f64;
            let stop = (start + 6 * 3_600).min(end) as f64;
            while t < stop {
                let sent = rng.random_range(400..1_500);
                let received = rng.random_range(200..4_000);
                conns.push(https(rng, w, r, t as u64, sent, received, 1e6, l));
                t += 300.0 * rng.random_range(0.7..1.3);
            }
            single(vec![r], 443, conns)
        }
        Scenario::FirstHourUpload => {
            let r = attacker_address(rng);
            let total: u64 = rng.random_range(500_000_000..2_000_000_000);
            for i in 0..3 {
                let s = start + i * rng.random_range(30..300);
                conns.push(https(rng, w, r, s, total / 3, total / 600, 2e6, l));
            }
            single(vec![r], 443, conns)
        }
        Scenario::ReverseShell => {
            // One connection; the records spread its bytes over every minute it is open.
            let r = attacker_address(rng);
            let minutes = 6 * 60;
            let per_minute_sent = rng.random_range(2_000..20_000u64);
            let per_minute_received = rng.random_range(2_000..20_000u64);
            let mut c = https(rng, w, r, start, 0, 0, 1.0, l);
            c.duration = minutes * 60;
            c.sent = per_minute_sent * minutes;
            c.received = per_minute_received * minutes;
            conns.push(c);
            single(vec![r], 443, conns)
        }
        Scenario::UnusualPort => {
            let r = attacker_address(rng);
            let port = [4444u16, 6667, 8088, 1337, 31337][rng.random_range(0..5)];
            for i in 0..rng.random_range(2..6u64) {
                let sent = rng.random_range(500..50_000);
                let mut c = https(rng, w, r, start + i * 45, sent, 2_000, 1e6, l);
                c.remote_port = port;
                conns.push(c);
            }
            single(vec![r], port, conns)
        }
    }
}
