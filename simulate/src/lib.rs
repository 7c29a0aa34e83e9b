//! `egresswatch-simulate`: flow-log records for a SageMaker Studio VPC, written the way AWS
//! writes them (both legs of the NAT gateway and the workload's own interface, 60-second
//! windows, per-interface delivery that is late and out of order within AWS's bounds,
//! NODATA and SKIPDATA now and then), with ground truth for every attack in them.
//!
//! Benign traffic is a fleet of data scientists' workloads with a day/night and weekday
//! rhythm; attacks are the exfiltration, command-and-control and reconnaissance patterns the
//! monitor must catch. Same seed, same records.

mod records;
mod traffic;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use records::Delivered;
pub use traffic::{threat_list, tor_exit_list};

/// Something the simulator can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Data scientists' daily work: package installs, model downloads, API calls, S3 through
    /// the gateway endpoint, EFS and kernel traffic inside the VPC.
    Benign,
    /// SSH/SCP upload through the NAT (the security group was opened to port 22).
    SshExfil,
    /// Gigabytes uploaded over HTTPS to a destination never contacted before.
    HttpsUpload,
    /// An upload cut into parts of a few megabytes, each to another host of one new network,
    /// so that no single address receives much.
    SprayUpload,
    /// A few megabytes every few minutes to one destination, for hours.
    SlowDrip,
    /// Small, regular check-ins to a command server, with jitter.
    Beaconing,
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
    /// A remote port the workload never used (the security group was opened to it).
    UnusualPort,
}

impl Scenario {
    pub const ATTACKS: [Scenario; 12] = [
        Scenario::SshExfil,
        Scenario::HttpsUpload,
        Scenario::SprayUpload,
        Scenario::SlowDrip,
        Scenario::Beaconing,
        Scenario::PortScan,
        Scenario::PortSweep,
        Scenario::Denylisted,
        Scenario::Tor,
        Scenario::DnsOutside,
        Scenario::DnsOverHttps,
        Scenario::UnusualPort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Benign => "benign",
            Scenario::SshExfil => "ssh-exfil",
            Scenario::HttpsUpload => "https-upload",
            Scenario::SprayUpload => "spray-upload",
            Scenario::SlowDrip => "slow-drip",
            Scenario::Beaconing => "beaconing",
            Scenario::PortScan => "port-scan",
            Scenario::PortSweep => "port-sweep",
            Scenario::Denylisted => "denylisted",
            Scenario::Tor => "tor",
            Scenario::DnsOutside => "dns-outside",
            Scenario::DnsOverHttps => "dns-over-https",
            Scenario::UnusualPort => "unusual-port",
        }
    }

    /// Parses `NAME[,NAME…]`; `all` is benign plus every attack, `attacks` every attack.
    pub fn parse_list(text: &str) -> Result<Vec<Scenario>, String> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "all" => {
                    out.push(Scenario::Benign);
                    out.extend(Scenario::ATTACKS);
                }
                "attacks" => out.extend(Scenario::ATTACKS),
                _ => {
                    let s = std::iter::once(Scenario::Benign)
                        .chain(Scenario::ATTACKS)
                        .find(|s| s.name() == name)
                        .ok_or_else(|| {
                            format!(
                                "unknown scenario `{name}`; known: all, attacks, benign, {}",
                                Scenario::ATTACKS.map(|s| s.name()).join(", ")
                            )
                        })?;
                    out.push(s);
                }
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no scenario given".into());
        }
        Ok(out)
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
    pub scenarios: Vec<Scenario>,
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
            scenarios: vec![Scenario::Benign],
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
