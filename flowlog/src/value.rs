//! Typed values of flow-log fields and the small enums AWS defines for some of them.

use std::fmt;
use std::net::IpAddr;

/// `action`: whether the security group or network ACL let the traffic through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
}

/// `log-status`: whether the interface was logged normally in the capture window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStatus {
    /// Data is logging normally.
    Ok,
    /// No traffic to or from the interface during the window.
    NoData,
    /// Records were skipped (capacity or internal error): visibility was lost.
    SkipData,
}

/// `type`: the traffic's address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpType {
    IPv4,
    IPv6,
    Efa,
}

/// `flow-direction`, relative to the interface that captured the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowDirection {
    Ingress,
    Egress,
}

/// `traffic-path`: the path egress traffic takes to its destination (codes 1–8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficPath {
    /// 1: another resource in the same VPC.
    SameVpc,
    /// 2: an internet gateway or a gateway VPC endpoint.
    InternetGatewayOrGatewayEndpoint,
    /// 3: a virtual private gateway.
    VirtualPrivateGateway,
    /// 4: intra-Region VPC peering.
    IntraRegionPeering,
    /// 5: inter-Region VPC peering.
    InterRegionPeering,
    /// 6: a local gateway.
    LocalGateway,
    /// 7: a gateway VPC endpoint (Nitro instances).
    GatewayEndpoint,
    /// 8: an internet gateway (Nitro instances).
    InternetGateway,
}

impl TrafficPath {
    /// The numeric code AWS writes.
    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    /// The path for an AWS code, or `None` outside 1–8.
    pub fn from_code(code: u8) -> Option<Self> {
        use TrafficPath::*;
        Some(match code {
            1 => SameVpc,
            2 => InternetGatewayOrGatewayEndpoint,
            3 => VirtualPrivateGateway,
            4 => IntraRegionPeering,
            5 => InterRegionPeering,
            6 => LocalGateway,
            7 => GatewayEndpoint,
            8 => InternetGateway,
            _ => return None,
        })
    }
}

/// `tcp-flags`: the TCP flags seen in the capture window, OR-ed together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    pub fn bits(self) -> u8 {
        self.0
    }
    pub fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    /// SYN-ACK (18): the interface answered a connection request.
    pub fn syn_ack(self) -> bool {
        self.contains(Self::SYN | Self::ACK)
    }
}

macro_rules! keyword_enum {
    ($ty:ident { $( $variant:ident => $text:literal ),* $(,)? }) => {
        impl $ty {
            /// The text AWS writes for this value.
            pub fn as_str(self) -> &'static str {
                match self { $( $ty::$variant => $text, )* }
            }
            pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
                match b { $( x if x == $text.as_bytes() => Some($ty::$variant), )* _ => None }
            }
            /// Every value, for error messages.
            pub(crate) const EXPECTED: &'static str = concat!($( $text, " " ),*);
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(Action { Accept => "ACCEPT", Reject => "REJECT" });
keyword_enum!(LogStatus { Ok => "OK", NoData => "NODATA", SkipData => "SKIPDATA" });
keyword_enum!(IpType { IPv4 => "IPv4", IPv6 => "IPv6", Efa => "EFA" });
keyword_enum!(FlowDirection { Ingress => "ingress", Egress => "egress" });

/// One field's value in a parsed record. Text borrows the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value<'a> {
    /// `-`: not applicable or not computed for this record.
    Absent,
    Text(&'a str),
    Addr(IpAddr),
    /// Ports, protocol, version, counters, timestamps, flag bits and codes.
    Int(u64),
    Action(Action),
    LogStatus(LogStatus),
    IpType(IpType),
    FlowDirection(FlowDirection),
    TrafficPath(TrafficPath),
}

impl Value<'_> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Value::Absent)
    }
}

/// Writes the value as it appears in a flow-log line.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Absent => f.write_str("-"),
            Value::Text(s) => f.write_str(s),
            Value::Addr(a) => write!(f, "{a}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Action(a) => f.write_str(a.as_str()),
            Value::LogStatus(s) => f.write_str(s.as_str()),
            Value::IpType(t) => f.write_str(t.as_str()),
            Value::FlowDirection(d) => f.write_str(d.as_str()),
            Value::TrafficPath(p) => write!(f, "{}", p.code()),
        }
    }
}
