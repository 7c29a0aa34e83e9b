//! The stack as reconciled desired state. Each resource is found by its `egresswatch:stack`
//! tag (or a deterministic name), compared with the spec, and created or repaired in
//! dependency order. One code path serves `plan` (records what it would do, calls nothing that
//! mutates) and `up` (does it), so the plan is exactly what `up` will do.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    AttributeBooleanValue, DomainType, Filter, FlowLogsResourceType, IpPermission, IpRange,
    LogDestinationType, ResourceType, Tag, TagSpecification, TrafficType, UserIdGroupPair,
    VpcAttributeName, VpcEndpointType,
};
use serde::Serialize;

use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::spec::{flow_log_format, StackSpec};
use crate::ProvisionError;

pub const STACK_TAG: &str = "egresswatch:stack";
pub const RESOURCE_TAG: &str = "egresswatch:resource";

/// Whether the run may change anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Apply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Replace,
    Delete,
}

/// One difference between the account and the spec, and what reconciling it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub resource: String,
    pub kind: ChangeKind,
    pub detail: String,
    /// The difference weakens the egress controls (an extra egress rule, a missing flow log…).
    pub security: bool,
}

/// Whether a plan's changes say the stack is there at all: a plan that would create the VPC
/// found no stack, and its outputs describe nothing real.
pub fn stack_exists(changes: &[Change]) -> bool {
    !changes
        .iter()
        .any(|c| c.resource == "vpc" && c.kind == ChangeKind::Create)
}

/// What `outputs` prints: everything the monitor needs to know about the stack.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Outputs {
    pub stack: String,
    pub region: String,
    pub account_id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub public_subnets: Vec<SubnetOut>,
    pub private_subnets: Vec<SubnetOut>,
    pub nat_gateways: Vec<NatOut>,
    pub internet_gateway_id: String,
    pub s3_endpoint_id: String,
    pub s3_prefix_list_id: String,
    pub security_group_id: String,
    pub studio_role_arn: String,
    pub flow_log_role_arn: String,
    pub log_group: String,
    pub flow_log_id: String,
    pub flow_log_format: String,
    pub domain_id: String,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SubnetOut {
    pub id: String,
    pub cidr: String,
    pub availability_zone: String,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NatOut {
    pub id: String,
    pub subnet_id: String,
    pub network_interface_id: String,
    pub private_ip: String,
    pub public_ip: String,
    pub allocation_id: String,
}

/// A run over the stack: `plan`, `up` or `status`.
pub struct Reconciler<'c> {
    pub clients: &'c Clients,
    pub spec: StackSpec,
    pub stack: String,
    pub mode: Mode,
    pub changes: Vec<Change>,
    pub out: Outputs,
    /// How long to wait for a NAT gateway or domain to become available.
    pub wait_timeout: Duration,
    /// `aws`, `aws-cn`, `aws-us-gov`…: from the caller's identity once `run` starts.
    partition: String,
    private_route_tables: Vec<String>,
    progress: Box<dyn FnMut(&str) + Send + 'c>,
}

const PLANNED: &str = "(known after up)";

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Each bucket and everything in it, as policy resources.
fn bucket_arns(partition: &str, buckets: &[String]) -> Vec<String> {
    buckets
        .iter()
        .flat_map(|b| {
            [
                format!("arn:{partition}:s3:::{b}"),
                format!("arn:{partition}:s3:::{b}/*"),
            ]
        })
        .collect()
}

fn has_tag(tags: &[Tag], key: &str, value: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(key) && t.value() == Some(value))
}

/// Normalised security-group rule: (direction, protocol, from, to, target).
type Rule = (&'static str, String, i32, i32, String);

fn rules_of(direction: &'static str, perms: &[IpPermission]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for p in perms {
        let proto = p.ip_protocol().unwrap_or("-1").to_string();
        let (from, to) = if proto == "-1" {
            (-1, -1)
        } else {
            (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
        };
        for r in p.ip_ranges() {
            out.insert((
                direction,
                proto.clone(),
                from,
                to,
                format!("cidr:{}", r.cidr_ip().unwrap_or("")),
            ));
        }
        for r in p.ipv6_ranges() {
            out.insert((
                direction,
                proto.clone(),
                from,
                to,
                format!("cidr6:{}", r.cidr_ipv6().unwrap_or("")),
            ));
        }
        for g in p.user_id_group_pairs() {
            out.insert((
                direction,
                proto.clone(),
                from,
                to,
                format!("sg:{}", g.group_id().unwrap_or("")),
            ));
        }
        for pl in p.prefix_list_ids() {
            out.insert((
                direction,
                proto.clone(),
                from,
                to,
                format!("pl:{}", pl.prefix_list_id().unwrap_or("")),
            ));
        }
    }
    out
}

fn permission(rule: &Rule) -> IpPermission {
    let (_, proto, from, to, target) = rule;
    let mut b = IpPermission::builder().ip_protocol(proto);
    if proto != "-1" {
        b = b.from_port(*from).to_port(*to);
    }
    if let Some(c) = target.strip_prefix("cidr:") {
        b = b.ip_ranges(IpRange::builder().cidr_ip(c).build());
    } else if let Some(c) = target.strip_prefix("cidr6:") {
        b = b.ipv6_ranges(
            aws_sdk_ec2::types::Ipv6Range::builder()
                .cidr_ipv6(c)
                .build(),
        );
    } else if let Some(g) = target.strip_prefix("sg:") {
        b = b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build());
    } else if let Some(p) = target.strip_prefix("pl:") {
        b = b.prefix_list_ids(
            aws_sdk_ec2::types::PrefixListId::builder()
                .prefix_list_id(p)
                .build(),
        );
    }
    b.build()
}

/// The Studio security group's rules: HTTPS out to anywhere; NFS (EFS) and the
/// JupyterServer–KernelGateway ports only within the group, which VpcOnly Studio requires.
pub fn desired_sg_rules(sg: &str) -> BTreeSet<Rule> {
    let own = format!("sg:{sg}");
    BTreeSet::from([
        (
            "egress",
            "tcp".to_string(),
            443,
            443,
            "cidr:0.0.0.0/0".to_string(),
        ),
        ("egress", "tcp".to_string(), 2049, 2049, own.clone()),
        ("egress", "tcp".to_string(), 8192, 65535, own.clone()),
        ("ingress", "tcp".to_string(), 2049, 2049, own.clone()),
        ("ingress", "tcp".to_string(), 8192, 65535, own),
    ])
}

fn decode_policy(doc: &str) -> serde_json::Value {
    let decoded = percent_encoding::percent_decode_str(doc).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or(serde_json::Value::Null)
}

impl<'c> Reconciler<'c> {
    pub fn new(clients: &'c Clients, spec: StackSpec, stack: &str, mode: Mode) -> Self {
        Reconciler {
            clients,
            spec,
            stack: stack.to_string(),
            mode,
            changes: Vec::new(),
            out: Outputs {
                stack: stack.to_string(),
                region: clients.region.clone(),
                ..Outputs::default()
            },
            wait_timeout: Duration::from_secs(15 * 60),
            partition: crate::aws::partition(&clients.region).to_string(),
            private_route_tables: Vec::new(),
            progress: Box::new(|_| {}),
        }
    }

    /// Receives a line for each long wait and each change made.
    pub fn on_progress(mut self, f: impl FnMut(&str) + Send + 'c) -> Self {
        self.progress = Box::new(f);
        self
    }

    fn name(&self, resource: &str) -> String {
        format!("{}-{resource}", self.stack)
    }

    fn tags(&self, resource_type: ResourceType, resource: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource_type)
            .tags(tag(STACK_TAG, &self.stack))
            .tags(tag(RESOURCE_TAG, resource))
            .tags(tag("Name", &self.name(resource)))
            .build()
    }

    fn stack_filter(&self) -> Filter {
        filter(&format!("tag:{STACK_TAG}"), &self.stack)
    }

    /// Records a change; returns true when it should be carried out now.
    fn change(
        &mut self,
        resource: &str,
        kind: ChangeKind,
        detail: impl Into<String>,
        security: bool,
    ) -> bool {
        let c = Change {
            resource: resource.to_string(),
            kind,
            detail: detail.into(),
            security,
        };
        if self.mode == Mode::Apply {
            (self.progress)(&format!("{:?} {}: {}", c.kind, c.resource, c.detail).to_lowercase());
        }
        self.changes.push(c);
        self.mode == Mode::Apply
    }

    pub fn role_name(&self, which: &str) -> String {
        format!("{}-{which}", self.stack)
    }

    pub fn log_group_name(&self) -> String {
        format!("/egresswatch/{}/flow-logs", self.stack)
    }

    pub fn domain_name(&self) -> String {
        self.stack.clone()
    }

    /// Reconciles every resource in dependency order.
    pub async fn run(&mut self) -> Result<(), ProvisionError> {
        let (account, partition) = self.clients.caller().await?;
        self.out.account_id = account;
        self.partition = partition;
        self.vpc().await?;
        let zones = self.zones().await?;
        self.subnets(&zones).await?;
        self.internet_gateway().await?;
        self.nat_gateways().await?;
        self.route_tables().await?;
        // Only once no route points at them any more.
        self.leftover_nat_gateways().await?;
        self.s3_endpoint().await?;
        self.security_group().await?;
        self.studio_role().await?;
        self.flow_log_role().await?;
        self.log_group().await?;
        self.flow_log().await?;
        if self.spec.studio_domain {
            self.domain().await?;
        }
        Ok(())
    }

    async fn vpc(&mut self) -> Result<(), ProvisionError> {
        let ec2 = &self.clients.ec2;
        let found = ec2
            .describe_vpcs()
            .filters(self.stack_filter())
            .send()
            .await
            .map_err(|e| aws_error("vpc", "DescribeVpcs", e))?;
        let mut live: Vec<_> = found
            .vpcs()
            .iter()
            .filter(|v| v.state().map(|s| s.as_str()) != Some("deleted"))
            .cloned()
            .collect();
        // The one with the spec's range first, then by id: the same choice every run.
        let spec_cidr = self.spec.vpc_cidr.to_string();
        live.sort_by_key(|v| {
            (
                v.cidr_block() != Some(spec_cidr.as_str()),
                v.vpc_id().map(String::from),
            )
        });
        // Two VPCs carrying the stack's tag: two runs created at once (before the stack had a
        // lock) or someone copied the tag. Which one holds what is for a person to check.
        for extra in live.iter().skip(1) {
            let id = extra.vpc_id().unwrap_or("?");
            let detail = format!(
                "duplicate VPC {id} also carries this stack's tag; the stack uses {}. Not deleted automatically: check what it holds, then delete it (or `down` and `up`)",
                live[0].vpc_id().unwrap_or("?")
            );
            if self.mode == Mode::Plan {
                self.changes.push(Change {
                    resource: "vpc".into(),
                    kind: ChangeKind::Delete,
                    detail,
                    security: false,
                });
            } else {
                (self.progress)(&format!("warning: {detail}"));
            }
        }
        let existing = live.first().cloned();
        // NAT gateways carry IPv4 only: an IPv6 range on the VPC is a way out past the NAT.
        if let Some(v) = &existing {
            for a in v.ipv6_cidr_block_association_set() {
                let state = a
                    .ipv6_cidr_block_state()
                    .and_then(|s| s.state())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                if !matches!(state.as_str(), "associated" | "associating") {
                    continue;
                }
                let detail = format!(
                    "remove the IPv6 range {}: traffic over IPv6 leaves without the NAT",
                    a.ipv6_cidr_block().unwrap_or("?")
                );
                if self.change("vpc", ChangeKind::Update, detail, true) {
                    ec2.disassociate_vpc_cidr_block()
                        .association_id(a.association_id().unwrap_or_default())
                        .send()
                        .await
                        .map_err(|e| aws_error("vpc", "DisassociateVpcCidrBlock", e))?;
                }
            }
        }
        let vpc_id = match existing {
            Some(v) => {
                self.out.account_id = v.owner_id().unwrap_or_default().to_string();
                self.out.vpc_cidr = v.cidr_block().unwrap_or_default().to_string();
                let id = v.vpc_id().unwrap_or_default().to_string();
                if v.cidr_block() != Some(self.spec.vpc_cidr.to_string().as_str()) {
                    return Err(ProvisionError::Conflict(format!(
                        "VPC {id} has CIDR {} but the spec says {}; a VPC's range cannot change: run `down` first or fix the spec",
                        v.cidr_block().unwrap_or("?"), self.spec.vpc_cidr
                    )));
                }
                id
            }
            None => {
                self.out.vpc_cidr = self.spec.vpc_cidr.to_string();
                if !self.change(
                    "vpc",
                    ChangeKind::Create,
                    format!("VPC {}", self.spec.vpc_cidr),
                    false,
                ) {
                    self.out.vpc_id = PLANNED.into();
                    return Ok(());
                }
                let created = ec2
                    .create_vpc()
                    .cidr_block(self.spec.vpc_cidr.to_string())
                    .tag_specifications(self.tags(ResourceType::Vpc, "vpc"))
                    .send()
                    .await
                    .map_err(|e| aws_error("vpc", "CreateVpc", e))?;
                let v = created.vpc().ok_or_else(|| {
                    ProvisionError::Unexpected("CreateVpc returned no VPC".into())
                })?;
                self.out.account_id = v.owner_id().unwrap_or_default().to_string();
                v.vpc_id().unwrap_or_default().to_string()
            }
        };
        self.out.vpc_id = vpc_id.clone();
        for (attr, label) in [
            (VpcAttributeName::EnableDnsSupport, "DNS support"),
            (VpcAttributeName::EnableDnsHostnames, "DNS hostnames"),
        ] {
            let got = ec2
                .describe_vpc_attribute()
                .vpc_id(&vpc_id)
                .attribute(attr.clone())
                .send()
                .await
                .map_err(|e| aws_error("vpc", "DescribeVpcAttribute", e))?;
            let on = match attr {
                VpcAttributeName::EnableDnsSupport => {
                    got.enable_dns_support().and_then(|a| a.value())
                }
                _ => got.enable_dns_hostnames().and_then(|a| a.value()),
            }
            .unwrap_or(false);
            if !on && self.change("vpc", ChangeKind::Update, format!("turn on {label}"), false) {
                let value = AttributeBooleanValue::builder().value(true).build();
                let req = ec2.modify_vpc_attribute().vpc_id(&vpc_id);
                let req = if attr == VpcAttributeName::EnableDnsSupport {
                    req.enable_dns_support(value)
                } else {
                    req.enable_dns_hostnames(value)
                };
                req.send()
                    .await
                    .map_err(|e| aws_error("vpc", "ModifyVpcAttribute", e))?;
            }
        }
        Ok(())
    }

    async fn zones(&mut self) -> Result<Vec<String>, ProvisionError> {
        if !self.spec.availability_zones.is_empty() {
            return Ok(self.spec.availability_zones.clone());
        }
        let got = self
            .clients
            .ec2
            .describe_availability_zones()
            .filters(filter("state", "available"))
            .filters(filter("zone-type", "availability-zone"))
            .send()
            .await
            .map_err(|e| aws_error("availability zones", "DescribeAvailabilityZones", e))?;
        let mut names: Vec<String> = got
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name().map(String::from))
            .collect();
        names.sort();
        let want = self.spec.zones();
        if names.len() < want {
            return Err(ProvisionError::Conflict(format!(
                "region {} has {} available zones; the spec needs {want}",
                self.clients.region,
                names.len()
            )));
        }
        names.truncate(want);
        Ok(names)
    }

    async fn subnets(&mut self, zones: &[String]) -> Result<(), ProvisionError> {
        let existing = if self.out.vpc_id == PLANNED {
            vec![]
        } else {
            self.clients
                .ec2
                .describe_subnets()
                .filters(filter("vpc-id", &self.out.vpc_id))
                .filters(self.stack_filter())
                .send()
                .await
                .map_err(|e| aws_error("subnets", "DescribeSubnets", e))?
                .subnets()
                .to_vec()
        };
        let tiers: Vec<(&str, Vec<ipnet::Ipv4Net>)> = vec![
            ("public", self.spec.public_subnets.clone()),
            ("private", self.spec.private_subnets.clone()),
        ];
        for (tier, cidrs) in tiers {
            for (i, cidr) in cidrs.iter().enumerate() {
                let resource = format!("subnet/{tier}-{i}");
                let zone = &zones[i];
                let found = existing
                    .iter()
                    .find(|s| has_tag(s.tags(), RESOURCE_TAG, &resource));
                let out = match found {
                    Some(s) => {
                        if s.cidr_block() != Some(cidr.to_string().as_str()) {
                            return Err(ProvisionError::Conflict(format!("{resource} {} has CIDR {} but the spec says {cidr}; run `down` first or fix the spec", s.subnet_id().unwrap_or("?"), s.cidr_block().unwrap_or("?"))));
                        }
                        SubnetOut {
                            id: s.subnet_id().unwrap_or_default().into(),
                            cidr: cidr.to_string(),
                            availability_zone: s.availability_zone().unwrap_or_default().into(),
                        }
                    }
                    None => {
                        if self.change(
                            &resource,
                            ChangeKind::Create,
                            format!("{tier} subnet {cidr} in {zone}"),
                            false,
                        ) {
                            let created = self
                                .clients
                                .ec2
                                .create_subnet()
                                .vpc_id(&self.out.vpc_id)
                                .cidr_block(cidr.to_string())
                                .availability_zone(zone)
                                .tag_specifications(self.tags(ResourceType::Subnet, &resource))
                                .send()
                                .await
                                .map_err(|e| aws_error(&resource, "CreateSubnet", e))?;
                            let id = created
                                .subnet()
                                .and_then(|s| s.subnet_id())
                                .unwrap_or_default()
                                .to_string();
                            SubnetOut {
                                id,
                                cidr: cidr.to_string(),
                                availability_zone: zone.clone(),
                            }
                        } else {
                            SubnetOut {
                                id: PLANNED.into(),
                                cidr: cidr.to_string(),
                                availability_zone: zone.clone(),
                            }
                        }
                    }
                };
                if tier == "public" {
                    self.out.public_subnets.push(out)
                } else {
                    self.out.private_subnets.push(out)
                }
            }
        }
        Ok(())
    }

    async fn internet_gateway(&mut self) -> Result<(), ProvisionError> {
        let ec2 = &self.clients.ec2;
        let got = ec2
            .describe_internet_gateways()
            .filters(self.stack_filter())
            .send()
            .await
            .map_err(|e| aws_error("internet gateway", "DescribeInternetGateways", e))?;
        let igw = got.internet_gateways().first().cloned();
        let (id, attached) = match igw {
            Some(g) => {
                let attached = g
                    .attachments()
                    .iter()
                    .any(|a| a.vpc_id() == Some(self.out.vpc_id.as_str()));
                (
                    g.internet_gateway_id().unwrap_or_default().to_string(),
                    attached,
                )
            }
            None => {
                if !self.change(
                    "internet-gateway",
                    ChangeKind::Create,
                    "internet gateway, attached to the VPC",
                    false,
                ) {
                    self.out.internet_gateway_id = PLANNED.into();
                    return Ok(());
                }
                let c = ec2
                    .create_internet_gateway()
                    .tag_specifications(
                        self.tags(ResourceType::InternetGateway, "internet-gateway"),
                    )
                    .send()
                    .await
                    .map_err(|e| aws_error("internet gateway", "CreateInternetGateway", e))?;
                (
                    c.internet_gateway()
                        .and_then(|g| g.internet_gateway_id())
                        .unwrap_or_default()
                        .to_string(),
                    false,
                )
            }
        };
        self.out.internet_gateway_id = id.clone();
        if !attached
            && self.change(
                "internet-gateway",
                ChangeKind::Update,
                "attach to the VPC",
                false,
            )
        {
            ec2.attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(&self.out.vpc_id)
                .send()
                .await
                .map_err(|e| aws_error("internet gateway", "AttachInternetGateway", e))?;
        }
        Ok(())
    }

    async fn nat_gateways(&mut self) -> Result<(), ProvisionError> {
        let count = if self.spec.nat_gateway_per_az {
            self.spec.zones()
        } else {
            1
        };
        let ec2 = self.clients.ec2.clone();
        let addresses = ec2
            .describe_addresses()
            .filters(self.stack_filter())
            .send()
            .await
            .map_err(|e| aws_error("elastic IP", "DescribeAddresses", e))?
            .addresses()
            .to_vec();
        // NAT gateways cannot be filtered by tag reliably everywhere: filter by VPC, then by
        // tag and state here.
        let nats = if self.out.vpc_id == PLANNED {
            vec![]
        } else {
            ec2.describe_nat_gateways()
                .filter(filter("vpc-id", &self.out.vpc_id))
                .send()
                .await
                .map_err(|e| aws_error("NAT gateway", "DescribeNatGateways", e))?
                .nat_gateways()
                .to_vec()
        };
        for i in 0..count {
            let eip_res = format!("eip/{i}");
            let nat_res = format!("nat-gateway/{i}");
            let subnet_id = self.out.public_subnets[i].id.clone();
            let allocation_id = match addresses
                .iter()
                .find(|a| has_tag(a.tags(), RESOURCE_TAG, &eip_res))
            {
                Some(a) => a.allocation_id().unwrap_or_default().to_string(),
                None => {
                    if self.change(
                        &eip_res,
                        ChangeKind::Create,
                        "Elastic IP for the NAT gateway",
                        false,
                    ) {
                        ec2.allocate_address()
                            .domain(DomainType::Vpc)
                            .tag_specifications(self.tags(ResourceType::ElasticIp, &eip_res))
                            .send()
                            .await
                            .map_err(|e| aws_error(&eip_res, "AllocateAddress", e))?
                            .allocation_id()
                            .unwrap_or_default()
                            .to_string()
                    } else {
                        PLANNED.to_string()
                    }
                }
            };
            let live = nats.iter().find(|n| {
                has_tag(n.tags(), RESOURCE_TAG, &nat_res)
                    && has_tag(n.tags(), STACK_TAG, &self.stack)
                    && !matches!(
                        n.state().map(|s| s.as_str()),
                        Some("deleted") | Some("deleting") | Some("failed")
                    )
            });
            let nat_id = match live {
                Some(n) => n.nat_gateway_id().unwrap_or_default().to_string(),
                None => {
                    if !self.change(
                        &nat_res,
                        ChangeKind::Create,
                        format!(
                            "NAT gateway in {}",
                            self.out.public_subnets[i].availability_zone
                        ),
                        false,
                    ) {
                        self.out.nat_gateways.push(NatOut {
                            id: PLANNED.into(),
                            subnet_id,
                            allocation_id,
                            ..NatOut::default()
                        });
                        continue;
                    }
                    ec2.create_nat_gateway()
                        .subnet_id(&subnet_id)
                        .allocation_id(&allocation_id)
                        .tag_specifications(self.tags(ResourceType::Natgateway, &nat_res))
                        .send()
                        .await
                        .map_err(|e| aws_error(&nat_res, "CreateNatGateway", e))?
                        .nat_gateway()
                        .and_then(|n| n.nat_gateway_id())
                        .unwrap_or_default()
                        .to_string()
                }
            };
            let nat = self.wait_nat(&nat_id, &nat_res).await?;
            let addr = nat.nat_gateway_addresses().first();
            self.out.nat_gateways.push(NatOut {
                id: nat_id,
                subnet_id,
                network_interface_id: addr
                    .and_then(|a| a.network_interface_id())
                    .unwrap_or_default()
                    .into(),
                private_ip: addr.and_then(|a| a.private_ip()).unwrap_or_default().into(),
                public_ip: addr.and_then(|a| a.public_ip()).unwrap_or_default().into(),
                allocation_id,
            });
        }
        Ok(())
    }

    /// NAT gateways and Elastic IPs of zones the spec no longer gives one (after
    /// `nat-gateway-per-az` was switched off): each costs money for nothing, and a NAT gateway
    /// nobody routes to is an egress path nobody watches for.
    async fn leftover_nat_gateways(&mut self) -> Result<(), ProvisionError> {
        if self.out.vpc_id == PLANNED {
            return Ok(());
        }
        let ec2 = self.clients.ec2.clone();
        let wanted: Vec<String> = self.out.nat_gateways.iter().map(|n| n.id.clone()).collect();
        let nats = ec2
            .describe_nat_gateways()
            .filter(filter("vpc-id", &self.out.vpc_id))
            .send()
            .await
            .map_err(|e| aws_error("NAT gateway", "DescribeNatGateways", e))?;
        for n in nats.nat_gateways() {
            let id = n.nat_gateway_id().unwrap_or_default().to_string();
            let live = !matches!(
                n.state().map(|s| s.as_str()),
                Some("deleted") | Some("deleting") | Some("failed")
            );
            if !live || wanted.contains(&id) || !has_tag(n.tags(), STACK_TAG, &self.stack) {
                continue;
            }
            if self.change(
                "nat-gateway",
                ChangeKind::Delete,
                format!("NAT gateway {id}, which the spec no longer has"),
                false,
            ) {
                ec2.delete_nat_gateway()
                    .nat_gateway_id(&id)
                    .send()
                    .await
                    .map_err(|e| aws_error("nat-gateway", "DeleteNatGateway", e))?;
                crate::down::wait_nat_deleted(self.clients, &id, &mut *self.progress).await?;
            }
        }
        let wanted_eips: Vec<String> = self
            .out
            .nat_gateways
            .iter()
            .map(|n| n.allocation_id.clone())
            .collect();
        let eips = ec2
            .describe_addresses()
            .filters(self.stack_filter())
            .send()
            .await
            .map_err(|e| aws_error("elastic IP", "DescribeAddresses", e))?;
        for a in eips.addresses() {
            let Some(id) = a.allocation_id() else {
                continue;
            };
            if wanted_eips.iter().any(|w| w == id) {
                continue;
            }
            if self.change(
                "elastic-ip",
                ChangeKind::Delete,
                format!("Elastic IP {id}, which no NAT gateway of the spec uses"),
                false,
            ) {
                crate::retry_passing!(Passing::AddressStillHeld, &mut *self.progress, {
                    ec2.release_address()
                        .allocation_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("elastic-ip", "ReleaseAddress", e))
                })?;
            }
        }
        Ok(())
    }

    async fn wait_nat(
        &mut self,
        id: &str,
        resource: &str,
    ) -> Result<aws_sdk_ec2::types::NatGateway, ProvisionError> {
        let started = Instant::now();
        let mut delay = Duration::from_secs(2);
        let ec2 = self.clients.ec2.clone();
        loop {
            // Right after create, EC2 may not know the gateway yet.
            let got = crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                ec2.describe_nat_gateways()
                    .nat_gateway_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws_error(resource, "DescribeNatGateways", e))
            })?;
            let nat = got.nat_gateways().first().cloned().ok_or_else(|| {
                ProvisionError::Unexpected(format!("{resource} {id} disappeared"))
            })?;
            match nat.state().map(|s| s.as_str()) {
                Some("available") => return Ok(nat),
                Some("failed") => {
                    return Err(ProvisionError::Conflict(format!(
                        "{resource} {id} failed: {}",
                        nat.failure_message().unwrap_or("no reason given")
                    )))
                }
                state => {
                    if started.elapsed() > self.wait_timeout {
                        return Err(ProvisionError::Timeout {
                            resource: format!("{resource} {id}"),
                            waited: started.elapsed(),
                            state: state.unwrap_or("unknown").to_string(),
                        });
                    }
                    (self.progress)(&format!(
                        "waiting for {resource} {id} ({}, {}s)",
                        state.unwrap_or("pending"),
                        started.elapsed().as_secs()
                    ));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    async fn route_tables(&mut self) -> Result<(), ProvisionError> {
        let ec2 = self.clients.ec2.clone();
        let tables = if self.out.vpc_id == PLANNED {
            vec![]
        } else {
            ec2.describe_route_tables()
                .filters(filter("vpc-id", &self.out.vpc_id))
                .filters(self.stack_filter())
                .send()
                .await
                .map_err(|e| aws_error("route tables", "DescribeRouteTables", e))?
                .route_tables()
                .to_vec()
        };
        let mut plan: Vec<(String, Vec<String>, Target)> = vec![(
            "route-table/public".into(),
            self.out
                .public_subnets
                .iter()
                .map(|s| s.id.clone())
                .collect(),
            Target::Gateway(self.out.internet_gateway_id.clone()),
        )];
        for (i, s) in self.out.private_subnets.iter().enumerate() {
            let nat = &self.out.nat_gateways[if self.spec.nat_gateway_per_az { i } else { 0 }];
            plan.push((
                format!("route-table/private-{i}"),
                vec![s.id.clone()],
                Target::Nat(nat.id.clone()),
            ));
        }
        for (resource, subnets, target) in plan {
            let existing = tables
                .iter()
                .find(|t| has_tag(t.tags(), RESOURCE_TAG, &resource))
                .cloned();
            let (rt_id, routes, assocs) = match existing {
                Some(t) => (
                    t.route_table_id().unwrap_or_default().to_string(),
                    t.routes().to_vec(),
                    t.associations().to_vec(),
                ),
                None => {
                    if !self.change(
                        &resource,
                        ChangeKind::Create,
                        format!("route table, 0.0.0.0/0 -> {}", target.label()),
                        false,
                    ) {
                        continue;
                    }
                    let c = ec2
                        .create_route_table()
                        .vpc_id(&self.out.vpc_id)
                        .tag_specifications(self.tags(ResourceType::RouteTable, &resource))
                        .send()
                        .await
                        .map_err(|e| aws_error(&resource, "CreateRouteTable", e))?;
                    (
                        c.route_table()
                            .and_then(|r| r.route_table_id())
                            .unwrap_or_default()
                            .to_string(),
                        vec![],
                        vec![],
                    )
                }
            };
            if resource.starts_with("route-table/private") {
                self.private_route_tables.push(rt_id.clone());
            }
            let default_route = routes
                .iter()
                .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"));
            let current = default_route.map(|r| match (r.gateway_id(), r.nat_gateway_id()) {
                (_, Some(n)) => Target::Nat(n.to_string()),
                (Some(g), _) => Target::Gateway(g.to_string()),
                _ => Target::Other,
            });
            if current.as_ref() != Some(&target) {
                let (kind, detail) = if current.is_some() {
                    (
                        ChangeKind::Update,
                        format!(
                            "point 0.0.0.0/0 at {} instead of {}",
                            target.label(),
                            current.as_ref().map(|t| t.label()).unwrap_or_default()
                        ),
                    )
                } else {
                    (
                        ChangeKind::Update,
                        format!("route 0.0.0.0/0 -> {}", target.label()),
                    )
                };
                if self.change(&resource, kind, detail, current.is_some()) {
                    if current.is_some() {
                        let r = ec2
                            .replace_route()
                            .route_table_id(&rt_id)
                            .destination_cidr_block("0.0.0.0/0");
                        let r = match &target {
                            Target::Nat(n) => r.nat_gateway_id(n),
                            Target::Gateway(g) => r.gateway_id(g),
                            Target::Other => r,
                        };
                        r.send()
                            .await
                            .map_err(|e| aws_error(&resource, "ReplaceRoute", e))?;
                    } else {
                        let r = ec2
                            .create_route()
                            .route_table_id(&rt_id)
                            .destination_cidr_block("0.0.0.0/0");
                        let r = match &target {
                            Target::Nat(n) => r.nat_gateway_id(n),
                            Target::Gateway(g) => r.gateway_id(g),
                            Target::Other => r,
                        };
                        r.send()
                            .await
                            .map_err(|e| aws_error(&resource, "CreateRoute", e))?;
                    }
                }
            }
            // Routes to the internet the spec does not have: one to an internet gateway in a
            // private table, or any IPv6 route to a gateway, opens a path past the NAT (and
            // past the flow log's attribution). Routes to peerings, transit gateways or VPNs
            // are the owner's own integration and are left alone.
            for r in &routes {
                let gateway = r.gateway_id().unwrap_or("");
                let egress_only = r.egress_only_internet_gateway_id().unwrap_or("");
                let to_internet = gateway.starts_with("igw-") || egress_only.starts_with("eigw-");
                let v4 = r.destination_cidr_block();
                let v6 = r.destination_ipv6_cidr_block();
                let expected = v4 == Some("0.0.0.0/0");
                let private = resource.starts_with("route-table/private");
                if expected || !to_internet || (!private && v6.is_none()) {
                    continue;
                }
                let destination = v4.or(v6).unwrap_or("?");
                let detail = format!(
                    "remove route {destination} -> {}: a way to the internet past the NAT",
                    if gateway.is_empty() {
                        egress_only
                    } else {
                        gateway
                    }
                );
                if self.change(&resource, ChangeKind::Update, detail, true) {
                    ec2.delete_route()
                        .route_table_id(&rt_id)
                        .set_destination_cidr_block(v4.map(String::from))
                        .set_destination_ipv6_cidr_block(v6.map(String::from))
                        .send()
                        .await
                        .map_err(|e| aws_error(&resource, "DeleteRoute", e))?;
                }
            }
            for subnet in subnets {
                let associated = assocs
                    .iter()
                    .any(|a| a.subnet_id() == Some(subnet.as_str()));
                if associated || rt_id.is_empty() {
                    continue;
                }
                // A subnet has at most one explicit association: one with another table must
                // be moved (ReplaceRouteTableAssociation); AWS refuses AssociateRouteTable then.
                let elsewhere = ec2
                    .describe_route_tables()
                    .filters(filter("association.subnet-id", &subnet))
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "DescribeRouteTables", e))?
                    .route_tables()
                    .iter()
                    .find_map(|t| {
                        let a = t
                            .associations()
                            .iter()
                            .find(|a| a.subnet_id() == Some(subnet.as_str()))?;
                        let to_internet = t
                            .routes()
                            .iter()
                            .any(|r| r.gateway_id().is_some_and(|g| g.starts_with("igw-")));
                        Some((
                            t.route_table_id().unwrap_or_default().to_string(),
                            a.route_table_association_id()?.to_string(),
                            to_internet,
                        ))
                    });
                match elsewhere {
                    Some((other, association, to_internet)) => {
                        // A private subnet routed anywhere but its NAT table leaves the
                        // monitored path; through an internet gateway it is reachable too.
                        let private = resource.starts_with("route-table/private");
                        let detail = format!(
                            "subnet {subnet} is associated with route table {other}{}; move it back",
                            if to_internet { ", which routes to an internet gateway" } else { "" }
                        );
                        if self.change(&resource, ChangeKind::Update, detail, private) {
                            ec2.replace_route_table_association()
                                .association_id(&association)
                                .route_table_id(&rt_id)
                                .send()
                                .await
                                .map_err(|e| {
                                    aws_error(&resource, "ReplaceRouteTableAssociation", e)
                                })?;
                        }
                    }
                    None => {
                        if self.change(
                            &resource,
                            ChangeKind::Update,
                            format!("associate subnet {subnet}"),
                            false,
                        ) {
                            ec2.associate_route_table()
                                .route_table_id(&rt_id)
                                .subnet_id(&subnet)
                                .send()
                                .await
                                .map_err(|e| aws_error(&resource, "AssociateRouteTable", e))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn endpoint_policy(&self) -> String {
        use crate::spec::S3EndpointAccess;
        let region = &self.clients.region;
        let partition = self.partition.clone();
        if self.spec.s3_endpoint_access == S3EndpointAccess::Any {
            return serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]}).to_string();
        }
        let mut statements = Vec::new();
        if self.spec.s3_endpoint_access == S3EndpointAccess::Account {
            let mut accounts = vec![self.out.account_id.clone()];
            accounts.extend(self.spec.s3_endpoint_accounts.iter().cloned());
            accounts.retain(|a| !a.is_empty());
            statements.push(serde_json::json!({"Sid": "OwnAccountsBuckets", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                "Condition": {"StringEquals": {"aws:ResourceAccount": accounts}}}));
        }
        // Read-only, the AWS-owned buckets Studio needs: ECR serves image layers from the
        // first, the Amazon Linux repositories the next two, JumpStart its models the last.
        statements.push(serde_json::json!({"Sid": "AwsOwnedBucketsStudioReads", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": [
            format!("arn:{partition}:s3:::prod-{region}-starport-layer-bucket/*"),
            format!("arn:{partition}:s3:::packages.{region}.amazonaws.com/*"),
            format!("arn:{partition}:s3:::repo.{region}.amazonaws.com/*"),
            format!("arn:{partition}:s3:::jumpstart-cache-prod-{region}"),
            format!("arn:{partition}:s3:::jumpstart-cache-prod-{region}/*"),
        ]}));
        if !self.spec.s3_endpoint_buckets.is_empty() {
            let resources = bucket_arns(&partition, &self.spec.s3_endpoint_buckets);
            statements.push(serde_json::json!({"Sid": "ListedBuckets", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"], "Resource": resources}));
        }
        serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
    }

    async fn s3_endpoint(&mut self) -> Result<(), ProvisionError> {
        let ec2 = self.clients.ec2.clone();
        let service = format!("com.amazonaws.{}.s3", self.clients.region);
        let policy = self.endpoint_policy();
        let existing = if self.out.vpc_id == PLANNED {
            None
        } else {
            ec2.describe_vpc_endpoints()
                .filters(filter("vpc-id", &self.out.vpc_id))
                .filters(self.stack_filter())
                .send()
                .await
                .map_err(|e| aws_error("s3-endpoint", "DescribeVpcEndpoints", e))?
                .vpc_endpoints()
                .iter()
                .find(|e| {
                    !matches!(
                        e.state().map(|s| s.as_str()),
                        Some("deleted") | Some("deleting")
                    )
                })
                .cloned()
        };
        let rts = self.private_route_tables.clone();
        match existing {
            None => {
                if self.change(
                    "s3-endpoint",
                    ChangeKind::Create,
                    "S3 gateway endpoint on the private route tables",
                    false,
                ) {
                    let c = ec2
                        .create_vpc_endpoint()
                        .vpc_id(&self.out.vpc_id)
                        .service_name(&service)
                        .vpc_endpoint_type(VpcEndpointType::Gateway)
                        .set_route_table_ids(Some(rts))
                        .policy_document(policy)
                        .tag_specifications(self.tags(ResourceType::VpcEndpoint, "s3-endpoint"))
                        .send()
                        .await
                        .map_err(|e| aws_error("s3-endpoint", "CreateVpcEndpoint", e))?;
                    self.out.s3_endpoint_id = c
                        .vpc_endpoint()
                        .and_then(|e| e.vpc_endpoint_id())
                        .unwrap_or_default()
                        .to_string();
                } else {
                    self.out.s3_endpoint_id = PLANNED.into();
                }
            }
            Some(e) => {
                let id = e.vpc_endpoint_id().unwrap_or_default().to_string();
                self.out.s3_endpoint_id = id.clone();
                let missing: Vec<String> = rts
                    .iter()
                    .filter(|r| !e.route_table_ids().contains(r))
                    .cloned()
                    .collect();
                let policy_differs =
                    e.policy_document().map(decode_policy) != Some(decode_policy(&policy));
                if (!missing.is_empty() || policy_differs)
                    && self.change(
                        "s3-endpoint",
                        ChangeKind::Update,
                        if policy_differs {
                            "restore the endpoint policy"
                        } else {
                            "add the private route tables"
                        },
                        policy_differs,
                    )
                {
                    let mut m = ec2
                        .modify_vpc_endpoint()
                        .vpc_endpoint_id(&id)
                        .set_add_route_table_ids(Some(missing));
                    if policy_differs {
                        m = m.policy_document(policy);
                    }
                    m.send()
                        .await
                        .map_err(|e| aws_error("s3-endpoint", "ModifyVpcEndpoint", e))?;
                }
            }
        }
        if self.out.vpc_id != PLANNED {
            let pl = ec2
                .describe_prefix_lists()
                .filters(filter("prefix-list-name", &service))
                .send()
                .await
                .map_err(|e| aws_error("s3-endpoint", "DescribePrefixLists", e))?;
            self.out.s3_prefix_list_id = pl
                .prefix_lists()
                .first()
                .and_then(|p| p.prefix_list_id())
                .unwrap_or_default()
                .to_string();
        }
        Ok(())
    }

    /// The VPC's default security group allows all egress and all traffic within itself;
    /// anything attached to it by default (an ENI made without naming a group) would get that.
    /// It is kept empty (CIS AWS Foundations Benchmark: the default group restricts all
    /// traffic).
    async fn default_security_group(&mut self) -> Result<(), ProvisionError> {
        let ec2 = self.clients.ec2.clone();
        let found = ec2
            .describe_security_groups()
            .filters(filter("vpc-id", &self.out.vpc_id))
            .filters(filter("group-name", "default"))
            .send()
            .await
            .map_err(|e| aws_error("default-security-group", "DescribeSecurityGroups", e))?;
        let Some(g) = found.security_groups().first() else {
            return Ok(());
        };
        let id = g.group_id().unwrap_or_default().to_string();
        let (ingress, egress) = (
            g.ip_permissions().to_vec(),
            g.ip_permissions_egress().to_vec(),
        );
        if ingress.is_empty() && egress.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "remove the {} rule(s) of the VPC's default security group {id}: it must allow nothing",
            ingress.len() + egress.len()
        );
        if self.change("default-security-group", ChangeKind::Update, detail, true) {
            if !ingress.is_empty() {
                ec2.revoke_security_group_ingress()
                    .group_id(&id)
                    .set_ip_permissions(Some(ingress))
                    .send()
                    .await
                    .map_err(|e| {
                        aws_error("default-security-group", "RevokeSecurityGroupIngress", e)
                    })?;
            }
            if !egress.is_empty() {
                ec2.revoke_security_group_egress()
                    .group_id(&id)
                    .set_ip_permissions(Some(egress))
                    .send()
                    .await
                    .map_err(|e| {
                        aws_error("default-security-group", "RevokeSecurityGroupEgress", e)
                    })?;
            }
        }
        Ok(())
    }

    async fn security_group(&mut self) -> Result<(), ProvisionError> {
        let ec2 = self.clients.ec2.clone();
        let existing = if self.out.vpc_id == PLANNED {
            None
        } else {
            ec2.describe_security_groups()
                .filters(filter("vpc-id", &self.out.vpc_id))
                .filters(self.stack_filter())
                .send()
                .await
                .map_err(|e| aws_error("security-group", "DescribeSecurityGroups", e))?
                .security_groups()
                .first()
                .cloned()
        };
        let (id, current) = match existing {
            Some(g) => {
                let mut rules = rules_of("egress", g.ip_permissions_egress());
                rules.extend(rules_of("ingress", g.ip_permissions()));
                (g.group_id().unwrap_or_default().to_string(), rules)
            }
            None => {
                if !self.change(
                    "security-group",
                    ChangeKind::Create,
                    "Studio security group: HTTPS out; NFS and 8192-65535 within the group",
                    false,
                ) {
                    self.out.security_group_id = PLANNED.into();
                    return Ok(());
                }
                let c = ec2.create_security_group().group_name(self.name("studio")).vpc_id(&self.out.vpc_id)
                    .description("SageMaker Studio: HTTPS egress only; NFS and kernel ports within the group")
                    .tag_specifications(self.tags(ResourceType::SecurityGroup, "security-group")).send().await
                    .map_err(|e| aws_error("security-group", "CreateSecurityGroup", e))?;
                let id = c.group_id().unwrap_or_default().to_string();
                // A new group allows all egress; the rule comes back on describe and is revoked below.
                // Right after create, EC2 may not know the group yet.
                let g = crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                    ec2.describe_security_groups()
                        .group_ids(&id)
                        .send()
                        .await
                        .map_err(|e| aws_error("security-group", "DescribeSecurityGroups", e))
                })?;
                let mut rules = BTreeSet::new();
                if let Some(g) = g.security_groups().first() {
                    rules = rules_of("egress", g.ip_permissions_egress());
                    rules.extend(rules_of("ingress", g.ip_permissions()));
                }
                (id, rules)
            }
        };
        self.out.security_group_id = id.clone();
        self.default_security_group().await?;
        let desired = desired_sg_rules(&id);
        for extra in current.difference(&desired) {
            let detail = format!(
                "remove {} rule {} {}-{} {}",
                extra.0, extra.1, extra.2, extra.3, extra.4
            );
            if self.change("security-group", ChangeKind::Update, detail, true) {
                if extra.0 == "egress" {
                    crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                        ec2.revoke_security_group_egress()
                            .group_id(&id)
                            .ip_permissions(permission(extra))
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("security-group", "RevokeSecurityGroupEgress", e)
                            })
                    })?;
                } else {
                    crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                        ec2.revoke_security_group_ingress()
                            .group_id(&id)
                            .ip_permissions(permission(extra))
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("security-group", "RevokeSecurityGroupIngress", e)
                            })
                    })?;
                }
            }
        }
        for missing in desired.difference(&current) {
            let detail = format!(
                "add {} rule {} {}-{} {}",
                missing.0, missing.1, missing.2, missing.3, missing.4
            );
            if self.change("security-group", ChangeKind::Update, detail, false) {
                if missing.0 == "egress" {
                    crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                        ec2.authorize_security_group_egress()
                            .group_id(&id)
                            .ip_permissions(permission(missing))
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("security-group", "AuthorizeSecurityGroupEgress", e)
                            })
                    })?;
                } else {
                    crate::retry_passing!(Passing::NotYetVisible, &mut *self.progress, {
                        ec2.authorize_security_group_ingress()
                            .group_id(&id)
                            .ip_permissions(permission(missing))
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("security-group", "AuthorizeSecurityGroupIngress", e)
                            })
                    })?;
                }
            }
        }
        Ok(())
    }

    async fn role(
        &mut self,
        which: &str,
        trust: serde_json::Value,
        inline: serde_json::Value,
        managed: Option<&str>,
    ) -> Result<String, ProvisionError> {
        let iam = self.clients.iam.clone();
        let name = self.role_name(which);
        let resource = format!("iam-role/{which}");
        let arn = match iam.get_role().role_name(&name).send().await {
            Ok(r) => {
                let role = r
                    .role()
                    .cloned()
                    .ok_or_else(|| ProvisionError::Unexpected("GetRole returned no role".into()))?;
                // A role of that name that is not the stack's is someone else's: never changed.
                if !role
                    .tags()
                    .iter()
                    .any(|t| t.key() == STACK_TAG && t.value() == self.stack)
                {
                    return Err(ProvisionError::Conflict(format!(
                        "IAM role {name} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone: choose another stack name, or remove or tag that role",
                        self.stack, self.stack
                    )));
                }
                if decode_policy(role.assume_role_policy_document().unwrap_or("")) != trust
                    && self.change(
                        &resource,
                        ChangeKind::Update,
                        "restore the trust policy",
                        true,
                    )
                {
                    iam.update_assume_role_policy()
                        .role_name(&name)
                        .policy_document(trust.to_string())
                        .send()
                        .await
                        .map_err(|e| aws_error(&resource, "UpdateAssumeRolePolicy", e))?;
                }
                role.arn().to_string()
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) =>
            {
                if !self.change(
                    &resource,
                    ChangeKind::Create,
                    format!("IAM role {name}"),
                    false,
                ) {
                    return Ok(PLANNED.into());
                }
                let r = iam
                    .create_role()
                    .role_name(&name)
                    .assume_role_policy_document(trust.to_string())
                    .description(format!("egresswatch stack {}: {which}", self.stack))
                    .tags(
                        aws_sdk_iam::types::Tag::builder()
                            .key(STACK_TAG)
                            .value(&self.stack)
                            .build()
                            .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
                    )
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "CreateRole", e))?;
                r.role().map(|r| r.arn().to_string()).unwrap_or_default()
            }
            Err(e) => return Err(aws_error(&resource, "GetRole", e)),
        };
        let current = if arn == PLANNED {
            None
        } else {
            match iam
                .get_role_policy()
                .role_name(&name)
                .policy_name("egresswatch")
                .send()
                .await
            {
                Ok(p) => Some(decode_policy(p.policy_document())),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_no_such_entity_exception()) =>
                {
                    None
                }
                Err(e) => return Err(aws_error(&resource, "GetRolePolicy", e)),
            }
        };
        if current.as_ref() != Some(&inline)
            && self.change(
                &resource,
                if current.is_some() {
                    ChangeKind::Update
                } else {
                    ChangeKind::Create
                },
                "inline policy",
                current.is_some(),
            )
        {
            iam.put_role_policy()
                .role_name(&name)
                .policy_name("egresswatch")
                .policy_document(inline.to_string())
                .send()
                .await
                .map_err(|e| aws_error(&resource, "PutRolePolicy", e))?;
        }
        if arn == PLANNED {
            return Ok(arn);
        }
        // Whatever else was put on or attached to the role widens what a notebook (or the
        // flow-log service) may do: removed.
        let inline_names = iam
            .list_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(|e| aws_error(&resource, "ListRolePolicies", e))?;
        for extra in inline_names
            .policy_names()
            .iter()
            .filter(|p| p.as_str() != "egresswatch")
        {
            if self.change(
                &resource,
                ChangeKind::Update,
                format!("remove inline policy {extra}, which the spec does not give"),
                true,
            ) {
                iam.delete_role_policy()
                    .role_name(&name)
                    .policy_name(extra)
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "DeleteRolePolicy", e))?;
            }
        }
        let attached = iam
            .list_attached_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(|e| aws_error(&resource, "ListAttachedRolePolicies", e))?;
        for extra in attached
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_arn())
            .filter(|a| Some(*a) != managed)
        {
            if self.change(
                &resource,
                ChangeKind::Update,
                format!("detach {extra}, which the spec does not give"),
                true,
            ) {
                iam.detach_role_policy()
                    .role_name(&name)
                    .policy_arn(extra)
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "DetachRolePolicy", e))?;
            }
        }
        if let Some(policy_arn) = managed {
            if !attached
                .attached_policies()
                .iter()
                .any(|p| p.policy_arn() == Some(policy_arn))
                && self.change(
                    &resource,
                    ChangeKind::Update,
                    format!("attach {policy_arn}"),
                    false,
                )
            {
                iam.attach_role_policy()
                    .role_name(&name)
                    .policy_arn(policy_arn)
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "AttachRolePolicy", e))?;
            }
        }
        Ok(arn)
    }

    async fn studio_role(&mut self) -> Result<(), ProvisionError> {
        let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
        let region = &self.clients.region;
        let partition = self.partition.clone();
        let account = &self.out.account_id;
        let mut statements = vec![
            serde_json::json!({"Sid": "StudioLogs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"], "Resource": format!("arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*")}),
            serde_json::json!({"Sid": "StudioImages", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"], "Resource": "*"}),
            serde_json::json!({"Sid": "StudioNetworkInterfaces", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission", "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeDhcpOptions"], "Resource": "*"}),
            // What launching and using Studio apps needs (SageMaker Role Manager's "Run Studio
            // Applications"), on this account's Studio resources only.
            serde_json::json!({"Sid": "StudioApps", "Effect": "Allow", "Action": ["sagemaker:CreateApp", "sagemaker:DeleteApp", "sagemaker:DescribeApp", "sagemaker:ListApps", "sagemaker:DescribeDomain", "sagemaker:ListDomains", "sagemaker:DescribeUserProfile", "sagemaker:ListUserProfiles", "sagemaker:DescribeSpace", "sagemaker:ListSpaces", "sagemaker:ListTags", "sagemaker:AddTags"], "Resource": [
                format!("arn:{partition}:sagemaker:{region}:{account}:domain/*"),
                format!("arn:{partition}:sagemaker:{region}:{account}:user-profile/*"),
                format!("arn:{partition}:sagemaker:{region}:{account}:space/*"),
                format!("arn:{partition}:sagemaker:{region}:{account}:app/*"),
            ]}),
            // What would leave the network design, denied even when a broader policy (the
            // managed one) allows it: work started outside the VPC, a notebook instance with
            // direct internet access, and changes to the domain itself (VpcOnly, its groups).
            serde_json::json!({"Sid": "DenyWorkOutsideTheVpc", "Effect": "Deny", "Action": ["sagemaker:CreateTrainingJob", "sagemaker:CreateProcessingJob", "sagemaker:CreateHyperParameterTuningJob", "sagemaker:CreateModel", "sagemaker:CreateNotebookInstance", "sagemaker:CreateAutoMLJob", "sagemaker:CreateAutoMLJobV2", "sagemaker:CreateMonitoringSchedule", "sagemaker:CreateDataQualityJobDefinition", "sagemaker:CreateModelQualityJobDefinition", "sagemaker:CreateModelBiasJobDefinition", "sagemaker:CreateModelExplainabilityJobDefinition"], "Resource": "*",
                "Condition": {"Null": {"sagemaker:VpcSubnets": "true"}}}),
            serde_json::json!({"Sid": "DenyDirectInternetAccess", "Effect": "Deny", "Action": ["sagemaker:CreateNotebookInstance"], "Resource": "*",
                "Condition": {"StringEquals": {"sagemaker:DirectInternetAccess": "Enabled"}}}),
            serde_json::json!({"Sid": "DenyChangingTheDomain", "Effect": "Deny", "Action": ["sagemaker:CreateDomain", "sagemaker:UpdateDomain", "sagemaker:DeleteDomain"], "Resource": "*"}),
        ];
        if !self.spec.s3_endpoint_buckets.is_empty() {
            let res = bucket_arns(&partition, &self.spec.s3_endpoint_buckets);
            statements.push(serde_json::json!({"Sid": "StudioData", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"], "Resource": res}));
        }
        let inline = serde_json::json!({"Version": "2012-10-17", "Statement": statements});
        let managed = self
            .spec
            .studio_managed_policy
            .then(|| format!("arn:{partition}:iam::aws:policy/AmazonSageMakerFullAccess"));
        self.out.studio_role_arn = self
            .role("studio-execution", trust, inline, managed.as_deref())
            .await?;
        Ok(())
    }

    async fn flow_log_role(&mut self) -> Result<(), ProvisionError> {
        let region = self.clients.region.clone();
        let partition = self.partition.clone();
        let account = self.out.account_id.clone();
        let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account}, "ArnLike": {"aws:SourceArn": format!("arn:{partition}:ec2:{region}:{account}:vpc-flow-log/*")}}}]});
        let group_arn = format!(
            "arn:{partition}:logs:{region}:{account}:log-group:{}",
            self.log_group_name()
        );
        let inline = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"], "Resource": [group_arn.clone(), format!("{group_arn}:*")]},
            {"Effect": "Allow", "Action": ["logs:DescribeLogGroups"], "Resource": "*"}]});
        self.out.flow_log_role_arn = self.role("flow-logs", trust, inline, None).await?;
        Ok(())
    }

    async fn log_group(&mut self) -> Result<(), ProvisionError> {
        let logs = self.clients.logs.clone();
        let name = self.log_group_name();
        self.out.log_group = name.clone();
        let got = logs
            .describe_log_groups()
            .log_group_name_prefix(&name)
            .send()
            .await
            .map_err(|e| aws_error("log-group", "DescribeLogGroups", e))?;
        let existing = got
            .log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(name.as_str()))
            .cloned();
        if let Some(g) = &existing {
            if !log_group_is_stacks(&logs, g, &self.stack).await? {
                return Err(ProvisionError::Conflict(format!(
                    "log group {name} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone: choose another stack name, or remove or tag that log group",
                    self.stack, self.stack
                )));
            }
        }
        let retention = match existing {
            Some(g) => {
                if g.kms_key_id() != self.spec.log_kms_key_arn.as_deref()
                    && self.spec.log_kms_key_arn.is_some()
                    && self.change(
                        "log-group",
                        ChangeKind::Update,
                        "encrypt with the spec's KMS key",
                        true,
                    )
                {
                    logs.associate_kms_key()
                        .log_group_name(&name)
                        .kms_key_id(self.spec.log_kms_key_arn.clone().unwrap_or_default())
                        .send()
                        .await
                        .map_err(|e| aws_error("log-group", "AssociateKmsKey", e))?;
                }
                g.retention_in_days()
            }
            None => {
                if !self.change(
                    "log-group",
                    ChangeKind::Create,
                    format!("log group {name}, {} days", self.spec.log_retention_days),
                    false,
                ) {
                    return Ok(());
                }
                logs.create_log_group()
                    .log_group_name(&name)
                    .set_kms_key_id(self.spec.log_kms_key_arn.clone())
                    .tags(STACK_TAG, &self.stack)
                    .send()
                    .await
                    .map_err(|e| aws_error("log-group", "CreateLogGroup", e))?;
                None
            }
        };
        if retention != Some(self.spec.log_retention_days)
            && self.change(
                "log-group",
                ChangeKind::Update,
                format!("retention {} days", self.spec.log_retention_days),
                false,
            )
        {
            logs.put_retention_policy()
                .log_group_name(&name)
                .retention_in_days(self.spec.log_retention_days)
                .send()
                .await
                .map_err(|e| aws_error("log-group", "PutRetentionPolicy", e))?;
        }
        Ok(())
    }

    async fn flow_log(&mut self) -> Result<(), ProvisionError> {
        let ec2 = self.clients.ec2.clone();
        let format = flow_log_format();
        self.out.flow_log_format = format.clone();
        let existing = if self.out.vpc_id == PLANNED {
            vec![]
        } else {
            ec2.describe_flow_logs()
                .filter(filter("resource-id", &self.out.vpc_id))
                .send()
                .await
                .map_err(|e| aws_error("flow-log", "DescribeFlowLogs", e))?
                .flow_logs()
                .to_vec()
        };
        let ours: Vec<_> = existing
            .iter()
            .filter(|f| has_tag(f.tags(), STACK_TAG, &self.stack))
            .collect();
        let mut keep = None;
        for f in &ours {
            let id = f.flow_log_id().unwrap_or_default().to_string();
            let mut why = Vec::new();
            if f.log_format() != Some(format.as_str()) {
                why.push("record format differs");
            }
            if f.log_group_name() != Some(self.log_group_name().as_str()) {
                why.push("log group differs");
            }
            if f.traffic_type().map(|t| t.as_str()) != Some("ALL") {
                why.push("traffic type is not ALL");
            }
            if f.max_aggregation_interval() != Some(60) {
                why.push("aggregation interval is not 60 s");
            }
            if f.deliver_logs_permission_arn() != Some(self.out.flow_log_role_arn.as_str()) {
                why.push("delivery role differs");
            }
            // A flow log that cannot deliver leaves the monitor blind; made again once the
            // role and log group before it are in spec.
            let failing;
            if f.deliver_logs_status() == Some("FAILED") {
                failing = format!(
                    "its delivery fails ({})",
                    f.deliver_logs_error_message().unwrap_or("no reason given")
                );
                why.push(&failing);
            }
            if why.is_empty() && keep.is_none() {
                keep = Some(id);
                continue;
            }
            let detail = if why.is_empty() {
                format!("delete duplicate flow log {id}")
            } else {
                format!(
                    "flow log {id}: {} (a flow log cannot be changed in place)",
                    why.join(", ")
                )
            };
            if self.change("flow-log", ChangeKind::Replace, detail, true) {
                ec2.delete_flow_logs()
                    .flow_log_ids(&id)
                    .send()
                    .await
                    .map_err(|e| aws_error("flow-log", "DeleteFlowLogs", e))?;
            }
        }
        match keep {
            Some(id) => self.out.flow_log_id = id,
            None => {
                if !self.change(
                    "flow-log",
                    ChangeKind::Create,
                    "VPC flow log: ALL traffic, 60 s, custom format with NAT attribution fields",
                    self.out.vpc_id != PLANNED,
                ) {
                    self.out.flow_log_id = PLANNED.into();
                    return Ok(());
                }
                let group = self.log_group_name();
                let tags = self.tags(ResourceType::VpcFlowLog, "flow-log");
                // A role made seconds ago cannot be assumed by the flow-log service yet.
                let c =
                    crate::retry_passing!(Passing::RoleNotYetAssumable, &mut *self.progress, {
                        ec2.create_flow_logs()
                            .resource_ids(&self.out.vpc_id)
                            .resource_type(FlowLogsResourceType::Vpc)
                            .traffic_type(TrafficType::All)
                            .log_destination_type(LogDestinationType::CloudWatchLogs)
                            .log_group_name(&group)
                            .deliver_logs_permission_arn(&self.out.flow_log_role_arn)
                            .log_format(&format)
                            .max_aggregation_interval(60)
                            .tag_specifications(tags.clone())
                            .send()
                            .await
                            .map_err(|e| aws_error("flow-log", "CreateFlowLogs", e))
                    })?;
                if let Some(u) = c.unsuccessful().first() {
                    let msg = u
                        .error()
                        .and_then(|e| e.message())
                        .unwrap_or("unknown error");
                    return Err(ProvisionError::Conflict(format!(
                        "CreateFlowLogs refused the flow log: {msg}"
                    )));
                }
                self.out.flow_log_id = c.flow_log_ids().first().cloned().unwrap_or_default();
            }
        }
        Ok(())
    }

    pub async fn find_domain(
        &self,
    ) -> Result<
        Option<(
            String,
            aws_sdk_sagemaker::operation::describe_domain::DescribeDomainOutput,
        )>,
        ProvisionError,
    > {
        let sm = &self.clients.sagemaker;
        // ListDomains answers 10 to a page unless asked: every page.
        let mut domains = Vec::new();
        let mut pages = sm.list_domains().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("studio-domain", "ListDomains", e))?;
            domains.extend(page.domains().iter().cloned());
        }
        let name = self.domain_name();
        for d in &domains {
            if d.domain_name() == Some(name.as_str())
                && !matches!(
                    d.status().map(|s| s.as_str()),
                    Some("Deleting") | Some("Delete_Failed")
                )
            {
                let id = d.domain_id().unwrap_or_default().to_string();
                let desc = sm
                    .describe_domain()
                    .domain_id(&id)
                    .send()
                    .await
                    .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
                return Ok(Some((id, desc)));
            }
        }
        Ok(None)
    }

    async fn domain(&mut self) -> Result<(), ProvisionError> {
        use aws_sdk_sagemaker::types::{AppNetworkAccessType, AuthMode, UserSettings};
        let sm = self.clients.sagemaker.clone();
        let private: Vec<String> = self
            .out
            .private_subnets
            .iter()
            .map(|s| s.id.clone())
            .collect();
        match self.find_domain().await? {
            Some((id, d)) => {
                self.out.domain_id = id.clone();
                if d.vpc_id() != Some(self.out.vpc_id.as_str()) {
                    return Err(ProvisionError::Conflict(format!("Studio domain {id} is in VPC {} , not the stack's {}: delete it or rename the stack", d.vpc_id().unwrap_or("?"), self.out.vpc_id)));
                }
                let status = d
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                if status.ends_with("Failed") {
                    // Nothing `up` can repair: said, and left for a person.
                    let detail = format!(
                        "the domain is {status}: {}",
                        d.failure_reason().unwrap_or("no reason given")
                    );
                    if self.mode == Mode::Plan {
                        self.changes.push(Change {
                            resource: "studio-domain".into(),
                            kind: ChangeKind::Update,
                            detail,
                            security: false,
                        });
                    } else {
                        (self.progress)(&format!("warning: studio-domain {id}: {detail}"));
                    }
                }
                // Every setting that decides where Studio's traffic goes, in one repair.
                let mut drift = Vec::new();
                let mode = d
                    .app_network_access_type()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default();
                if mode != "VpcOnly" {
                    drift.push(format!("network access is {mode}, set VpcOnly"));
                }
                let sg = [self.out.security_group_id.clone()];
                let user = d.default_user_settings();
                if user.map(|u| u.security_groups()) != Some(&sg[..]) {
                    drift.push(format!(
                        "users' security groups are {:?}, set [{}]",
                        user.map(|u| u.security_groups()).unwrap_or_default(),
                        sg[0]
                    ));
                }
                if user.and_then(|u| u.execution_role()) != Some(self.out.studio_role_arn.as_str())
                {
                    drift.push(format!(
                        "users' execution role is {}, set {}",
                        user.and_then(|u| u.execution_role()).unwrap_or("none"),
                        self.out.studio_role_arn
                    ));
                }
                let space = d.default_space_settings();
                if space.map(|s| s.security_groups()) != Some(&sg[..])
                    || space.and_then(|s| s.execution_role())
                        != Some(self.out.studio_role_arn.as_str())
                {
                    drift.push(
                        "shared spaces' security groups or role differ, set the stack's".into(),
                    );
                }
                let mut subnets = d.subnet_ids().to_vec();
                subnets.sort();
                let mut wanted = private.clone();
                wanted.sort();
                if subnets != wanted {
                    drift.push(format!("subnets are {subnets:?}, set {wanted:?}"));
                }
                self.user_profile_overrides(&id).await?;
                if !drift.is_empty()
                    && self.change("studio-domain", ChangeKind::Update, drift.join("; "), true)
                {
                    use aws_sdk_sagemaker::types::{DefaultSpaceSettings, UserSettings};
                    sm.update_domain()
                        .domain_id(&id)
                        .app_network_access_type(AppNetworkAccessType::VpcOnly)
                        .default_user_settings(
                            UserSettings::builder()
                                .execution_role(&self.out.studio_role_arn)
                                .security_groups(&sg[0])
                                .build(),
                        )
                        .default_space_settings(
                            DefaultSpaceSettings::builder()
                                .execution_role(&self.out.studio_role_arn)
                                .security_groups(&sg[0])
                                .build(),
                        )
                        .set_subnet_ids(Some(wanted))
                        .send()
                        .await
                        .map_err(|e| aws_error("studio-domain", "UpdateDomain", e))?;
                }
            }
            None => {
                if !self.change(
                    "studio-domain",
                    ChangeKind::Create,
                    "SageMaker Studio domain: IAM auth, VpcOnly, private subnets",
                    false,
                ) {
                    self.out.domain_id = PLANNED.into();
                    return Ok(());
                }
                let name = self.domain_name();
                // A role made seconds ago cannot be assumed by SageMaker yet.
                let c =
                    crate::retry_passing!(Passing::RoleNotYetAssumable, &mut *self.progress, {
                        sm.create_domain()
                            .domain_name(&name)
                            .auth_mode(AuthMode::Iam)
                            .default_user_settings(
                                UserSettings::builder()
                                    .execution_role(&self.out.studio_role_arn)
                                    .security_groups(&self.out.security_group_id)
                                    .build(),
                            )
                            // Shared spaces get the domain's groups and role only when named here.
                            .default_space_settings(
                                aws_sdk_sagemaker::types::DefaultSpaceSettings::builder()
                                    .execution_role(&self.out.studio_role_arn)
                                    .security_groups(&self.out.security_group_id)
                                    .build(),
                            )
                            .set_subnet_ids(Some(private.clone()))
                            .vpc_id(&self.out.vpc_id)
                            .app_network_access_type(AppNetworkAccessType::VpcOnly)
                            .tags(
                                aws_sdk_sagemaker::types::Tag::builder()
                                    .key(STACK_TAG)
                                    .value(&self.stack)
                                    .build(),
                            )
                            .send()
                            .await
                            .map_err(|e| aws_error("studio-domain", "CreateDomain", e))
                    })?;
                // Some implementations return only the ARN; its last segment is the id.
                self.out.domain_id = c
                    .domain_id()
                    .map(String::from)
                    .or_else(|| {
                        c.domain_arn()
                            .and_then(|a| a.rsplit('/').next())
                            .map(String::from)
                    })
                    .unwrap_or_default();
                self.wait_domain().await?;
            }
        }
        Ok(())
    }
}

impl Reconciler<'_> {
    /// A user profile can name its own security groups, overriding the domain's: its apps then
    /// leave through groups the stack does not control. Set back to the stack's group.
    async fn user_profile_overrides(&mut self, domain: &str) -> Result<(), ProvisionError> {
        let sm = self.clients.sagemaker.clone();
        let mut names = Vec::new();
        let mut pages = sm
            .list_user_profiles()
            .domain_id_equals(domain)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("studio-user-profile", "ListUserProfiles", e))?;
            names.extend(
                page.user_profiles()
                    .iter()
                    .filter_map(|p| p.user_profile_name().map(String::from)),
            );
        }
        let ours = [self.out.security_group_id.clone()];
        for name in names {
            let p = sm
                .describe_user_profile()
                .domain_id(domain)
                .user_profile_name(&name)
                .send()
                .await
                .map_err(|e| aws_error("studio-user-profile", "DescribeUserProfile", e))?;
            let groups = p
                .user_settings()
                .map(|u| u.security_groups().to_vec())
                .unwrap_or_default();
            if groups.is_empty() || groups == ours {
                continue;
            }
            let detail = format!(
                "user profile {name} overrides the security groups with {groups:?}; set [{}]",
                ours[0]
            );
            if self.change("studio-user-profile", ChangeKind::Update, detail, true) {
                sm.update_user_profile()
                    .domain_id(domain)
                    .user_profile_name(&name)
                    .user_settings(
                        aws_sdk_sagemaker::types::UserSettings::builder()
                            .security_groups(&ours[0])
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| aws_error("studio-user-profile", "UpdateUserProfile", e))?;
            }
        }
        Ok(())
    }

    /// Waits until the new domain is InService; creation takes several minutes on AWS.
    async fn wait_domain(&mut self) -> Result<(), ProvisionError> {
        let id = self.out.domain_id.clone();
        let started = Instant::now();
        loop {
            let d = self
                .clients
                .sagemaker
                .describe_domain()
                .domain_id(&id)
                .send()
                .await
                .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
            let status = d
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            match status.as_str() {
                "InService" | "" => return Ok(()),
                "Failed" | "Update_Failed" => {
                    return Err(ProvisionError::Conflict(format!(
                        "studio-domain {id} failed: {}",
                        d.failure_reason().unwrap_or("no reason given")
                    )))
                }
                _ if started.elapsed() > self.wait_timeout => {
                    return Err(ProvisionError::Timeout {
                        resource: format!("studio-domain {id}"),
                        waited: started.elapsed(),
                        state: status,
                    })
                }
                _ => {
                    (self.progress)(&format!(
                        "waiting for studio-domain {id} ({status}, {}s)",
                        started.elapsed().as_secs()
                    ));
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Gateway(String),
    Nat(String),
    Other,
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Gateway(g) => format!("internet gateway {g}"),
            Target::Nat(n) => format!("NAT gateway {n}"),
            Target::Other => "something else".into(),
        }
    }
}

/// Whether a log group carries the stack's tag (an untagged one of the same name is
/// someone else's).
pub(crate) async fn log_group_is_stacks(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &aws_sdk_cloudwatchlogs::types::LogGroup,
    stack: &str,
) -> Result<bool, ProvisionError> {
    // DescribeLogGroups gives the ARN with a trailing `:*`; the tagging API wants it without.
    let Some(arn) = group.arn().map(|a| a.trim_end_matches(":*").to_string()) else {
        return Ok(false);
    };
    let tags = logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .map_err(|e| aws_error("log-group", "ListTagsForResource", e))?;
    Ok(tags
        .tags()
        .is_some_and(|t| t.get(STACK_TAG).map(String::as_str) == Some(stack)))
}
