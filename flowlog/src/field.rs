//! The field registry: every flow-log field AWS has defined (versions 2 to 11), as data.
//!
//! Each field knows its AWS name, the version that introduced it and the type its values
//! convert to. Everything else in the crate (format strings, header lines, typed accessors,
//! JSON keys) is driven from this one table, so supporting a new AWS field is one line here.

use std::fmt;

/// How a field's text converts to a typed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Free text kept as a borrowed `&str` (IDs, names, ARNs, tags).
    Text,
    /// An IPv4 or IPv6 address.
    Addr,
    /// A TCP/UDP port, 0–65535.
    Port,
    /// An IANA protocol number, 0–255.
    Protocol,
    /// The format version, 0–255.
    Version,
    /// A packet or byte counter, fits in `u64`.
    Count,
    /// Unix seconds; millisecond values are normalised to seconds.
    Timestamp,
    /// `ACCEPT` or `REJECT`.
    Action,
    /// `OK`, `NODATA` or `SKIPDATA`.
    LogStatus,
    /// OR-ed TCP flag bits, 0–255.
    TcpFlags,
    /// `IPv4`, `IPv6` or `EFA`.
    IpType,
    /// `ingress` or `egress`.
    FlowDirection,
    /// The egress path code, 1–8.
    TrafficPath,
    /// A small integer code, 0–255 (`encryption-status`).
    Code,
}

impl Kind {
    /// Whether values of this kind are written as JSON numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Kind::Port
                | Kind::Protocol
                | Kind::Version
                | Kind::Count
                | Kind::Timestamp
                | Kind::TcpFlags
                | Kind::TrafficPath
                | Kind::Code
        )
    }
}

macro_rules! fields {
    ($( $variant:ident => $name:literal, $version:literal, $kind:ident; )*) => {
        /// One flow-log field, named as AWS names it (`pkt-srcaddr`, `log-status`, …).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Field {
            $( #[doc = concat!("`", $name, "` (v", stringify!($version), ")")] $variant, )*
        }

        impl Field {
            /// Every known field, in AWS's table order.
            pub const ALL: &'static [Field] = &[ $( Field::$variant, )* ];

            /// The AWS name, with hyphens.
            pub const fn name(self) -> &'static str {
                match self { $( Field::$variant => $name, )* }
            }

            /// The flow-log version that introduced the field.
            pub const fn version(self) -> u8 {
                match self { $( Field::$variant => $version, )* }
            }

            /// The type its values convert to.
            pub const fn kind(self) -> Kind {
                match self { $( Field::$variant => Kind::$kind, )* }
            }
        }
    };
}

fields! {
    Version => "version", 2, Version;
    AccountId => "account-id", 2, Text;
    InterfaceId => "interface-id", 2, Text;
    SrcAddr => "srcaddr", 2, Addr;
    DstAddr => "dstaddr", 2, Addr;
    SrcPort => "srcport", 2, Port;
    DstPort => "dstport", 2, Port;
    Protocol => "protocol", 2, Protocol;
    Packets => "packets", 2, Count;
    Bytes => "bytes", 2, Count;
    Start => "start", 2, Timestamp;
    End => "end", 2, Timestamp;
    Action => "action", 2, Action;
    LogStatus => "log-status", 2, LogStatus;
    VpcId => "vpc-id", 3, Text;
    SubnetId => "subnet-id", 3, Text;
    InstanceId => "instance-id", 3, Text;
    TcpFlags => "tcp-flags", 3, TcpFlags;
    Type => "type", 3, IpType;
    PktSrcAddr => "pkt-srcaddr", 3, Addr;
    PktDstAddr => "pkt-dstaddr", 3, Addr;
    Region => "region", 4, Text;
    AzId => "az-id", 4, Text;
    SublocationType => "sublocation-type", 4, Text;
    SublocationId => "sublocation-id", 4, Text;
    PktSrcAwsService => "pkt-src-aws-service", 5, Text;
    PktDstAwsService => "pkt-dst-aws-service", 5, Text;
    FlowDirection => "flow-direction", 5, FlowDirection;
    TrafficPath => "traffic-path", 5, TrafficPath;
    ResourceType => "resource-type", 6, Text;
    TgwId => "tgw-id", 6, Text;
    TgwAttachmentId => "tgw-attachment-id", 6, Text;
    TgwSrcVpcAccountId => "tgw-src-vpc-account-id", 6, Text;
    TgwDstVpcAccountId => "tgw-dst-vpc-account-id", 6, Text;
    TgwSrcVpcId => "tgw-src-vpc-id", 6, Text;
    TgwDstVpcId => "tgw-dst-vpc-id", 6, Text;
    TgwSrcSubnetId => "tgw-src-subnet-id", 6, Text;
    TgwDstSubnetId => "tgw-dst-subnet-id", 6, Text;
    TgwSrcEni => "tgw-src-eni", 6, Text;
    TgwDstEni => "tgw-dst-eni", 6, Text;
    TgwSrcAzId => "tgw-src-az-id", 6, Text;
    TgwDstAzId => "tgw-dst-az-id", 6, Text;
    TgwPairAttachmentId => "tgw-pair-attachment-id", 6, Text;
    PacketsLostNoRoute => "packets-lost-no-route", 6, Count;
    PacketsLostBlackhole => "packets-lost-blackhole", 6, Count;
    PacketsLostMtuExceeded => "packets-lost-mtu-exceeded", 6, Count;
    PacketsLostTtlExpired => "packets-lost-ttl-expired", 6, Count;
    EcsClusterArn => "ecs-cluster-arn", 7, Text;
    EcsClusterName => "ecs-cluster-name", 7, Text;
    EcsContainerInstanceArn => "ecs-container-instance-arn", 7, Text;
    EcsContainerInstanceId => "ecs-container-instance-id", 7, Text;
    EcsContainerId => "ecs-container-id", 7, Text;
    EcsSecondContainerId => "ecs-second-container-id", 7, Text;
    EcsServiceName => "ecs-service-name", 7, Text;
    EcsTaskDefinitionArn => "ecs-task-definition-arn", 7, Text;
    EcsTaskArn => "ecs-task-arn", 7, Text;
    EcsTaskId => "ecs-task-id", 7, Text;
    RejectReason => "reject-reason", 8, Text;
    ResourceId => "resource-id", 9, Text;
    EncryptionStatus => "encryption-status", 10, Code;
    InstanceTag => "instance-tag", 11, Text;
    InstanceTag2 => "instance-tag-2", 11, Text;
    InterfaceTag => "interface-tag", 11, Text;
    InterfaceTag2 => "interface-tag-2", 11, Text;
    AsgTag => "asg-tag", 11, Text;
    AsgTag2 => "asg-tag-2", 11, Text;
    InterfaceType => "interface-type", 11, Text;
    NextHopInterfaceId => "next-hop-interface-id", 11, Text;
    NextHopSubnetId => "next-hop-subnet-id", 11, Text;
    NextHopAzId => "next-hop-az-id", 11, Text;
    NextHopVpcId => "next-hop-vpc-id", 11, Text;
    NextHopInterfaceType => "next-hop-interface-type", 11, Text;
}

/// How many fields the registry knows; also the most columns a format can have,
/// since a format may not repeat a field.
pub const FIELD_COUNT: usize = Field::ALL.len();

impl Field {
    /// Looks a field up by its AWS name. Underscores are accepted in place of hyphens
    /// (`pkt_srcaddr`), as Vector, Beats and Athena spell them; case matters, as in AWS.
    pub fn from_name(name: &str) -> Option<Field> {
        Self::from_name_bytes(name.as_bytes())
    }

    pub(crate) fn from_name_bytes(name: &[u8]) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| {
            let known = f.name().as_bytes();
            known.len() == name.len()
                && known
                    .iter()
                    .zip(name)
                    .all(|(&k, &n)| k == n || (k == b'-' && n == b'_'))
        })
    }

    /// The index of the field in [`Field::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name with underscores (`pkt_srcaddr`), as Athena and Parquet columns spell it.
    pub fn snake_name(self) -> String {
        self.name().replace('-', "_")
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f}");
            assert_eq!(Field::from_name(f.name()), Some(*f));
            assert_eq!(Field::from_name(&f.snake_name()), Some(*f));
            assert!((2..=11).contains(&f.version()), "{f}");
        }
        assert_eq!(FIELD_COUNT, 72);
    }

    #[test]
    fn lookups() {
        assert_eq!(Field::from_name("pkt-srcaddr"), Some(Field::PktSrcAddr));
        assert_eq!(Field::from_name("log_status"), Some(Field::LogStatus));
        assert_eq!(Field::from_name("Log-Status"), None);
        assert_eq!(Field::from_name("srcaddress"), None);
        assert_eq!(Field::TrafficPath.version(), 5);
        assert_eq!(Field::NextHopInterfaceType.version(), 11);
        assert_eq!(Field::Start.kind(), Kind::Timestamp);
    }
}
