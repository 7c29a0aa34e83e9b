//! Who stands behind a VPC address: its network interface, its instance and their tags. A
//! suppression can then say "the build boxes" (a tag) instead of a list of addresses that
//! changes with every Studio app, and name the workload's own interface even when the record
//! was logged on the NAT gateway's. Filled from `[[workloads]]` in the config and, with AWS
//! clients, from EC2 (the VPC's interfaces and instances, refreshed every few minutes).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use serde::Deserialize;

use crate::metrics::Metrics;

/// One `[[workloads]]` entry: tags for an address or a network, for sources without EC2
/// (files) and for addresses EC2 does not describe.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkloadEntry {
    /// An address or a network (CIDR).
    #[serde(deserialize_with = "crate::net::one")]
    pub address: IpNet,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// What is known of one address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    pub interface_id: Option<String>,
    pub instance_id: Option<String>,
    /// The interface's tags, with the instance's (which people tag far more often) over them.
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    described: HashMap<IpAddr, Workload>,
    configured: Vec<(IpNet, Workload)>,
}

/// The inventory the pipeline reads and the refresh task replaces.
pub type SharedInventory = Arc<RwLock<Inventory>>;

impl Inventory {
    pub fn from_config(entries: &[WorkloadEntry]) -> Self {
        Inventory {
            described: HashMap::new(),
            configured: entries
                .iter()
                .map(|e| {
                    (
                        e.address,
                        Workload {
                            interface_id: e.interface.clone(),
                            instance_id: None,
                            tags: e.tags.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// What EC2 says of the address, else the most specific configured network holding it.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Workload> {
        self.described.get(&ip).or_else(|| {
            self.configured
                .iter()
                .filter(|(net, _)| net.contains(&ip))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|(_, w)| w)
        })
    }

    pub fn described_len(&self) -> usize {
        self.described.len()
    }

    pub fn replace_described(&mut self, described: HashMap<IpAddr, Workload>) {
        self.described = described;
    }

    pub fn replace_configured(&mut self, entries: &[WorkloadEntry]) {
        self.configured = Inventory::from_config(entries).configured;
    }
}

fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

/// Counts a call (and its error) in the daemon's AWS call metrics.
pub(crate) fn counted<T, E>(m: &Metrics, op: &str, result: Result<T, E>) -> Result<T, String>
where
    E: std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    m.source_calls.with_label_values(&[op]).inc();
    result.map_err(|e| {
        let error = crate::daemon::aws_call_failed(m, op, &e, "", None);
        format!("{op}: {error}")
    })
}

/// Describes the VPC's interfaces and instances (every page). An instance's tags are laid over
/// its interfaces' tags.
pub async fn describe(
    ec2: &aws_sdk_ec2::Client,
    vpc_id: Option<&str>,
    m: &Metrics,
) -> Result<HashMap<IpAddr, Workload>, String> {
    use aws_sdk_ec2::types::Filter;
    let vpc_filter = |v: &str| Filter::builder().name("vpc-id").values(v).build();
    let mut out: HashMap<IpAddr, Workload> = HashMap::new();
    let mut pages = ec2
        .describe_network_interfaces()
        .set_filters(vpc_id.map(|v| vec![vpc_filter(v)]))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = counted(m, "DescribeNetworkInterfaces", page)?;
        for eni in page.network_interfaces() {
            let w = Workload {
                interface_id: eni.network_interface_id().map(String::from),
                instance_id: eni
                    .attachment()
                    .and_then(|a| a.instance_id())
                    .map(String::from),
                tags: tag_map(eni.tag_set()),
            };
            for ip in eni
                .private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address())
                .chain(eni.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()))
            {
                if let Ok(ip) = ip.parse() {
                    out.insert(ip, w.clone());
                }
            }
        }
    }
    let mut instance_tags: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(vpc_id.map(|v| vec![vpc_filter(v)]))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = counted(m, "DescribeInstances", page)?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            if let Some(id) = i.instance_id() {
                instance_tags.insert(id.to_string(), tag_map(i.tags()));
            }
        }
    }
    for w in out.values_mut() {
        if let Some(tags) = w.instance_id.as_ref().and_then(|i| instance_tags.get(i)) {
            for (k, v) in tags {
                w.tags.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

/// Describes the workloads once into `inventory`. A failure keeps what was known and says why
/// (a missing permission is the usual reason, and matters only to tag suppressions).
pub async fn refresh(
    ec2: &aws_sdk_ec2::Client,
    vpc_id: Option<&str>,
    inventory: &SharedInventory,
    m: &Metrics,
) {
    use crate::events::{Event, InventoryRefresh};
    match describe(ec2, vpc_id, m).await {
        Ok(described) => {
            let addresses = described.len();
            if let Ok(mut inv) = inventory.write() {
                inv.replace_described(described);
            }
            InventoryRefresh::Done { addresses }.emit(m);
        }
        Err(e) => InventoryRefresh::Kept { error: &e }.emit(m),
    }
}

/// Refreshes the inventory every `every` until shutdown, the first time at once unless the
/// caller has just done it.
pub async fn keep_fresh(
    ec2: aws_sdk_ec2::Client,
    vpc_id: Option<String>,
    every: std::time::Duration,
    first_now: bool,
    inventory: SharedInventory,
    m: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if first_now {
        refresh(&ec2, vpc_id.as_deref(), &inventory, &m).await;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        refresh(&ec2, vpc_id.as_deref(), &inventory, &m).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_addresses_win_over_the_most_specific_configured_network() {
        let entries: Vec<WorkloadEntry> = toml::from_str::<HashMap<String, Vec<WorkloadEntry>>>(
            r#"
workloads = [
  { address = "10.0.0.0/16", tags = { env = "prod" } },
  { address = "10.0.3.0/24", tags = { role = "build" } },
  { address = "10.0.3.12", tags = { role = "gpu" } },
]
"#,
        )
        .unwrap()
        .remove("workloads")
        .unwrap();
        let mut inv = Inventory::from_config(&entries);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(inv.lookup(ip("10.0.3.9")).unwrap().tags["role"], "build");
        // A single address, as the README writes it, is the most specific network of all.
        assert_eq!(inv.lookup(ip("10.0.3.12")).unwrap().tags["role"], "gpu");
        assert_eq!(inv.lookup(ip("10.0.4.9")).unwrap().tags["env"], "prod");
        assert!(inv.lookup(ip("10.1.0.1")).is_none());
        let mut described = HashMap::new();
        described.insert(
            ip("10.0.3.9"),
            Workload {
                interface_id: Some("eni-1".into()),
                ..Workload::default()
            },
        );
        inv.replace_described(described);
        assert_eq!(
            inv.lookup(ip("10.0.3.9")).unwrap().interface_id.as_deref(),
            Some("eni-1")
        );
    }
}
