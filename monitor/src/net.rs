//! Addresses and networks as the config writes them: a network in CIDR notation, or a single
//! address standing for itself (a /32 or /128), with an error that says which was expected.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// `203.0.113.0/24`, `203.0.113.7` (the address alone) or their IPv6 forms.
pub fn parse(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "`{text}`: expected an IP address (198.51.100.7) or a network in CIDR notation (198.51.100.0/24)"
    ))
}

pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|t| parse(t))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_stands_for_itself_and_a_network_for_its_range() {
        assert_eq!(
            parse("198.51.100.73").unwrap().to_string(),
            "198.51.100.73/32"
        );
        assert_eq!(parse(" 10.42.0.0/16 ").unwrap().to_string(), "10.42.0.0/16");
        assert_eq!(parse("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        let e = parse("10.42.16.x").unwrap_err();
        assert!(e.contains("`10.42.16.x`") && e.contains("CIDR"), "{e}");
    }
}
