//! `egresswatch-simulate`: flow-log records for a SageMaker Studio VPC, written the way AWS
//! writes them (both legs of the NAT gateway and the workload's own interface, 60-second
//! windows, per-interface delivery that is late and out of order within AWS's bounds,
//! NODATA and SKIPDATA now and then), with ground truth for every attack in them.
//!
//! Benign traffic is a fleet of data scientists' workloads with a day/night and weekday
//! rhythm; attacks are the exfiltration, command-and-control and reconnaissance patterns the
//! monitor must catch. Same seed, same records.

pub mod evaluate;
mod records;
mod traffic;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use records::Delivered;
pub use traffic::{threat_list, tor_exit_list};

/// An attack the simulator can schedule, with ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SSH/SCP upload through the NAT (the security group was opened to port 22).
    SshExfil,
    /// Gigabytes uploaded over HTTPS to a destination never contacted before.
    HttpsUpload,
    /// An upload cut into parts of a few megabytes, each to another host of one new network,
    /// so that no single address receives much.
    SprayUpload,
    /// Parts of one upload sent by several workloads to one new destination, so that no
    /// single workload sends much.
    SplitUpload,
    /// A few megabytes every few minutes to one destination, for hours.
    SlowDrip,
    /// Gigabytes written to a bucket through the S3 gateway endpoint, past the NAT: flow logs
    /// cannot name the bucket, but the workload's volume on that path jumps.
    S3Exfil,
    /// Small, regular check-ins to a command server every one to five minutes.
    Beaconing,
    /// Check-ins with 10-50 % jitter on the interval and sizes that vary, for hours.
    JitteredBeacon,
    /// Check-ins every 10 to 60 minutes, for a day.
    LongBeacon,
    /// Hundreds of ports probed on one host.
    PortScan,
    /// One port probed on hundreds of hosts.
    PortSweep,
    /// Connections to an address on the threat list.
    Denylisted,
    /// Attempts to reach Tor relays on their OR port.
    Tor,
    /// DNS to a resolver on the internet instead of the VPC's.
    DnsOutside,
    /// DNS over HTTPS to a public resolver: ordinary-looking HTTPS that no port-53 rule sees.
    DnsOverHttps,
    /// DNS over TLS (853) to a public resolver, which the HTTPS-only group rejects.
    DnsOverTls,
    /// A tunnel tried over ICMP and UDP 443, which the HTTPS-only group rejects.
    BlockedTunnel,
    /// A remote port the workload never used (the security group was opened to it).
    UnusualPort,
    /// Gigabytes uploaded in two hours by a quiet workload to the cloud-storage network the
    /// team's training jobs use (MITRE T1567): hides in every per-destination rule's
    /// shared-network exemption, not in the workload's own jump.
    SharedStorageUpload,
    /// A 5-minute beacon with 30 % jitter for six hours in the daemon's first hour, then
    /// silence: hides in the beacon rule's learning period.
    FirstDayBeacon,
    /// An upload of gigabytes to a new destination in the daemon's first hour: hides in the
    /// new-destination rule's learning period.
    FirstHourUpload,
    /// One TCP connection on 443 to a new remote held for six hours, a few kilobytes each way
    /// every minute (an interactive reverse shell): no volume and no rhythm to find.
    ReverseShell,
    /// 450 MB an hour (nine tenths of the S3 rule's hourly floor) to a bucket through the
    /// gateway endpoint for four hours, by a quiet workload: under the hour's floor every hour.
    S3UnderFloor,
    /// An upload to the storage network the team shares that starts at 20 MB an hour and
    /// grows by 30 % each hour for a day, by a quiet workload: each hour a little over the
    /// last, so a baseline that follows the workload follows the ramp.
    SlowRamp,
    /// Seven check-ins ten minutes apart to a new address, one under the beacon rule's
    /// `min-connections`.
    SparseBeacon,
}

impl Scenario {
    /// Every attack `all` and `attacks` select. `BY_NAME_ONLY` are left out.
    pub const ATTACKS: [Scenario; 21] = [
        Scenario::SshExfil,
        Scenario::HttpsUpload,
        Scenario::SprayUpload,
        Scenario::SplitUpload,
        Scenario::SlowDrip,
        Scenario::S3Exfil,
        Scenario::Beaconing,
        Scenario::JitteredBeacon,
        Scenario::LongBeacon,
        Scenario::PortScan,
        Scenario::PortSweep,
        Scenario::Denylisted,
        Scenario::Tor,
        Scenario::DnsOutside,
        Scenario::DnsOverHttps,
        Scenario::DnsOverTls,
        Scenario::BlockedTunnel,
        Scenario::UnusualPort,
        Scenario::FirstDayBeacon,
        Scenario::FirstHourUpload,
        Scenario::ReverseShell,
    ];

    /// Attacks selected only by name: those played by a quiet workload (in `all` another
    /// attack's gigabytes can become the chosen workload's own history, and the attack then
    /// hides there as flow logs allow) and the ones built to show where flow logs are blind.
    pub const BY_NAME_ONLY: [Scenario; 4] = [
        Scenario::SharedStorageUpload,
        Scenario::S3UnderFloor,
        Scenario::SlowRamp,
        Scenario::SparseBeacon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SshExfil => "ssh-exfil",
            Scenario::HttpsUpload => "https-upload",
            Scenario::SprayUpload => "spray-upload",
            Scenario::SplitUpload => "split-upload",
            Scenario::SlowDrip => "slow-drip",
            Scenario::S3Exfil => "s3-exfil",
            Scenario::Beaconing => "beaconing",
            Scenario::JitteredBeacon => "jittered-beacon",
            Scenario::LongBeacon => "long-beacon",
            Scenario::PortScan => "port-scan",
            Scenario::PortSweep => "port-sweep",
            Scenario::Denylisted => "denylisted",
            Scenario::Tor => "tor",
            Scenario::DnsOutside => "dns-outside",
            Scenario::DnsOverHttps => "dns-over-https",
            Scenario::DnsOverTls => "dns-over-tls",
            Scenario::BlockedTunnel => "blocked-tunnel",
            Scenario::UnusualPort => "unusual-port",
            Scenario::SharedStorageUpload => "shared-storage-upload",
            Scenario::FirstDayBeacon => "first-day-beacon",
            Scenario::FirstHourUpload => "first-hour-upload",
            Scenario::ReverseShell => "reverse-shell",
            Scenario::S3UnderFloor => "s3-under-floor",
            Scenario::SlowRamp => "slow-ramp",
            Scenario::SparseBeacon => "sparse-beacon",
        }
    }

    /// Event time the attack needs to show what it is: attacks are scheduled to start at
    /// least this long before the run ends.
    pub fn span_seconds(self) -> u64 {
        match self {
            Scenario::JitteredBeacon => 8 * 3_600,
            Scenario::LongBeacon => 16 * 3_600,
            Scenario::SlowDrip => 6 * 3_600,
            Scenario::SplitUpload | Scenario::SharedStorageUpload => 3 * 3_600,
            Scenario::FirstDayBeacon | Scenario::ReverseShell => 7 * 3_600,
            Scenario::S3UnderFloor => 5 * 3_600,
            Scenario::SlowRamp => 25 * 3_600,
            _ => 3_600,
        }
    }

    /// Attacks built to hide under a volume rule's bar that a workload with gigabytes of its
    /// own in its history would hide under anyway: they are played by a quiet workload (not
    /// a training job, a nightly exporter or an S3 pipeline), and selected by name, since in
    /// `all` another attack's gigabytes can become the chosen workload's history.
    pub fn needs_a_quiet_workload(self) -> bool {
        matches!(
            self,
            Scenario::SharedStorageUpload | Scenario::S3UnderFloor | Scenario::SlowRamp
        )
    }

    /// Why flow logs cannot show an attack, for the scenarios built to show where they
    /// cannot (`evaluate` reports them and does not count them as missed).
    pub fn blind(self) -> Option<&'static str> {
        match self {
            Scenario::SparseBeacon => Some(
                "seven check-ins of a few hundred bytes are seven connections to a new address: no rhythm can be told from six gaps, and no volume stands out",
            ),
            _ => None,
        }
    }

    /// Attacks built to hide in a rule's learning period start in the run's first hour,
    /// whatever `attacks_after_seconds` says.
    pub fn in_the_first_hour(self) -> bool {
        matches!(self, Scenario::FirstDayBeacon | Scenario::FirstHourUpload)
    }
}

/// A kind of benign work that trips naive detectors, on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Package installs from CDN front ends, git fetches, SaaS API calls, a shared team
    /// service, the long tail of sites nobody visited before, the home directory on EFS.
    DailyWork,
    /// Every workload's monitoring agent on a new connection every few minutes, hourly update
    /// checks, experiment tracking on keep-alive connections.
    Heartbeats,
    /// One workload in 25 alone polls a popular API at a fixed interval, day and night.
    ApiPolling,
    /// Model weights and datasets: gigabytes down, a trickle of ACKs up.
    LargeDownloads,
    /// Dataset reads from cloud storage whose every request may land on another address of
    /// a few /24s.
    CloudStorage,
    /// Training runs (one workload in four) writing checkpoints to cloud storage.
    CheckpointUploads,
    /// One workload in seven uploads gigabytes at 02:00 local time to the team's shared
    /// service, which everyone uses all day.
    NightlyUpload,
    /// Bursts of git pushes, some of them tens of megabytes.
    GitPush,
    /// S3 through the gateway endpoint: reads, small writes, now and then a dataset of
    /// gigabytes saved, and one workload in ten writing gigabytes every hour around the clock.
    S3Endpoint,
    /// Each interface's records delivered in 5-minute batches, a window's records in any
    /// order, a few batches half an hour late.
    BatchedDelivery,
}

impl Profile {
    pub const ALL: [Profile; 10] = [
        Profile::DailyWork,
        Profile::Heartbeats,
        Profile::ApiPolling,
        Profile::LargeDownloads,
        Profile::CloudStorage,
        Profile::CheckpointUploads,
        Profile::NightlyUpload,
        Profile::GitPush,
        Profile::S3Endpoint,
        Profile::BatchedDelivery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::DailyWork => "daily-work",
            Profile::Heartbeats => "heartbeats",
            Profile::ApiPolling => "api-polling",
            Profile::LargeDownloads => "large-downloads",
            Profile::CloudStorage => "cloud-storage",
            Profile::CheckpointUploads => "checkpoint-uploads",
            Profile::NightlyUpload => "nightly-upload",
            Profile::GitPush => "git-push",
            Profile::S3Endpoint => "s3-endpoint",
            Profile::BatchedDelivery => "batched-delivery",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What one run simulates: benign profiles, each with a rate multiplier, and attacks.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub profiles: Vec<(Profile, f64)>,
    pub attacks: Vec<Scenario>,
}

impl Selection {
    /// Parses `NAME[=RATE][,…]`: `all` is every benign profile and every attack, `benign` every
    /// profile, `attacks` every attack; a profile's RATE scales how often it happens (1 by
    /// default).
    pub fn parse(text: &str) -> Result<Selection, String> {
        let mut profiles: Vec<(Profile, f64)> = Vec::new();
        let mut attacks = Vec::new();
        let known = || {
            format!(
                "known: all, benign, attacks, {}, {}",
                Profile::ALL.map(|p| p.name()).join(", "),
                Scenario::ATTACKS
                    .into_iter()
                    .chain(Scenario::BY_NAME_ONLY)
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let add_profile = |p: Profile, rate: f64, profiles: &mut Vec<(Profile, f64)>| {
            profiles.retain(|(q, _)| *q != p);
            profiles.push((p, rate));
        };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rate) = match item.split_once('=') {
                Some((n, r)) => {
                    let rate: f64 = r.trim().parse().map_err(|_| {
                        format!("`{item}`: the rate after `=` must be a number, e.g. heartbeats=2")
                    })?;
                    if !(0.0..=100.0).contains(&rate) {
                        return Err(format!("`{item}`: the rate must be from 0 to 100"));
                    }
                    (n.trim(), Some(rate))
                }
                None => (item, None),
            };
            match name {
                "all" | "benign" => {
                    for p in Profile::ALL {
                        add_profile(p, rate.unwrap_or(1.0), &mut profiles);
                    }
                    if name == "all" {
                        attacks.extend(Scenario::ATTACKS);
                    }
                }
                "attacks" => attacks.extend(Scenario::ATTACKS),
                _ => {
                    if let Some(p) = Profile::ALL.into_iter().find(|p| p.name() == name) {
                        add_profile(p, rate.unwrap_or(1.0), &mut profiles);
                    } else if let Some(s) = Scenario::ATTACKS
                        .into_iter()
                        .chain(Scenario::BY_NAME_ONLY)
                        .find(|s| s.name() == name)
                    {
                        if rate.is_some() {
                            return Err(format!(
                                "`{item}`: only benign profiles take a rate; {name} is an attack"
                            ));
                        }
                        attacks.push(s);
                    } else {
                        return Err(format!("unknown scenario `{name}`; {}", known()));
                    }
                }
            }
        }
        profiles.sort_by_key(|(p, _)| *p);
        attacks.sort();
        attacks.dedup();
        if profiles.is_empty() && attacks.is_empty() {
            return Err("no scenario given".into());
        }
        Ok(Selection { profiles, attacks })
    }

    /// The rate of `p`, 0 when it is off.
    pub fn rate(&self, p: Profile) -> f64 {
        self.profiles
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0.0, |(_, r)| *r)
    }

    pub fn benign(&self) -> bool {
        self.profiles.iter().any(|(_, r)| *r > 0.0)
    }
}

/// The stack's network as the simulator needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub account_id: String,
    pub region: String,
    pub vpc_id: String,
    /// Private subnets (id, first address, address count, AZ id) where workloads live.
    pub private_subnets: Vec<Subnet>,
    pub nat_interface_id: String,
    pub nat_private_ip: Ipv4Addr,
    pub nat_subnet_id: String,
    /// An address inside the S3 prefix list the gateway endpoint routes.
    pub s3_addresses: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub base: Ipv4Addr,
    pub size: u32,
    pub az_id: String,
}

impl Default for Network {
    /// The provisioner's default stack: VPC 10.0.0.0/16, NAT in 10.0.0.0/24, private subnets
    /// 10.0.128.0/20 and 10.0.144.0/20.
    fn default() -> Self {
        Network {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            vpc_id: "vpc-0e9ea2c1f2a3b4c5d".into(),
            private_subnets: vec![
                Subnet {
                    id: "subnet-0a1b2c3d4e5f60001".into(),
                    base: Ipv4Addr::new(10, 0, 128, 0),
                    size: 4096,
                    az_id: "use1-az1".into(),
                },
                Subnet {
                    id: "subnet-0a1b2c3d4e5f60002".into(),
                    base: Ipv4Addr::new(10, 0, 144, 0),
                    size: 4096,
                    az_id: "use1-az2".into(),
                },
            ],
            nat_interface_id: "eni-0a7e1b2c3d4e5f601".into(),
            nat_private_ip: Ipv4Addr::new(10, 0, 0, 157),
            nat_subnet_id: "subnet-0a1b2c3d4e5f60000".into(),
            s3_addresses: vec![
                Ipv4Addr::new(52, 216, 8, 61),
                Ipv4Addr::new(52, 216, 139, 5),
                Ipv4Addr::new(52, 217, 44, 214),
                Ipv4Addr::new(52, 217, 97, 168),
            ],
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Unix seconds; rounded down to a minute.
    pub start: u64,
    pub duration_seconds: u64,
    pub workloads: usize,
    pub selection: Selection,
    pub network: Network,
    /// Attacks start no earlier than this many seconds after `start`, so baselines exist.
    pub attacks_after_seconds: u64,
    /// Fresh internet destinations each workload contacts per active hour (the long tail).
    pub new_destinations_per_hour: f64,
}

impl Settings {
    pub fn new(seed: u64, start: u64, duration_seconds: u64) -> Self {
        Settings {
            seed,
            start,
            duration_seconds,
            workloads: 20,
            selection: Selection {
                profiles: Profile::ALL.map(|p| (p, 1.0)).to_vec(),
                attacks: Vec::new(),
            },
            network: Network::default(),
            attacks_after_seconds: duration_seconds / 2,
            new_destinations_per_hour: 2.0,
        }
    }
}

/// Ground truth for one attack, as `--labels` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: u32,
    pub scenario: Scenario,
    pub workload: IpAddr,
    pub interface_id: String,
    /// Other workloads that took part (an upload split between several).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accomplices: Vec<IpAddr>,
    /// The remote ends the attack talks to.
    pub remotes: Vec<IpAddr>,
    pub remote_port: Option<u16>,
    /// Event time of the first and last malicious record (Unix seconds).
    pub start: u64,
    pub end: u64,
    /// Records the attack added, over every interface.
    pub records: u64,
}

/// What a run produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub records: u64,
    pub benign_records: u64,
    pub malicious_records: u64,
    pub nodata_records: u64,
    pub skipdata_records: u64,
    pub distinct_remotes: u64,
}

pub use records::Simulator;
