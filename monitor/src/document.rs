//! Findings as receivers get them. The egresswatch document (schema v1, described by
//! `monitor/schema/finding.v1.schema.json`) goes to stdout and the webhook; the webhook can
//! send OCSF Detection Findings instead, the class SIEMs that speak OCSF (Security Lake,
//! Splunk, Sentinel's ASIM mappings) ingest without a custom parser.

use serde_json::{json, Value};

use crate::alert::{rfc3339, Alert};
use crate::finding::{taxonomy, Severity};
use crate::rules::proto_name;

/// The version of the document's schema, bumped when a field changes meaning or goes.
pub const SCHEMA_VERSION: &str = "1";

/// Which document a sink sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// egresswatch's own document (schema v1).
    Egresswatch,
    /// OCSF 1.1 Detection Finding (class 2004).
    Ocsf,
}

fn action_word(action: Option<&str>) -> Option<&'static str> {
    match action {
        Some("ACCEPT") => Some("allowed"),
        Some("REJECT") => Some("blocked"),
        _ => None,
    }
}

/// The egresswatch document of an alert.
pub fn document(a: &Alert) -> Value {
    let f = &a.finding;
    let (kind, title) = taxonomy(f.rule);
    let mut doc = json!({
        "schema_version": SCHEMA_VERSION,
        "id": a.id,
        "type": kind,
        "rule": f.rule,
        "title": title,
        "severity": f.severity.as_str(),
        "severity_value": f.severity.value(),
        "summary": f.summary,
        "account_id": f.account_id,
        "region": f.region,
        "vpc_id": f.vpc_id,
        "stack": f.stack,
        "interface_id": f.interface_id,
        "instance_id": f.instance_id,
        "workload": f.workload.map(|w| w.to_string()),
        "remote": f.remote.map(|r| r.to_string()),
        "remote_port": f.remote_port,
        "protocol": f.protocol,
        "protocol_name": f.protocol.map(|p| proto_name(Some(p))),
        "action": action_word(f.action.as_deref()),
        "bytes": f.bytes,
        "packets": f.packets,
        "first_seen": rfc3339(f.first_seen),
        "last_seen": rfc3339(f.last_seen),
        "records": f.records,
        "count": a.count(),
        "folded": a.folded.is_some(),
        "updated": a.repeated.is_some(),
    });
    if let Some(e) = &f.evidence {
        doc["evidence"] = json!({
            "observed": e.observed,
            "baseline": e.baseline,
            "threshold": e.threshold,
            "unit": e.unit,
        });
    }
    doc
}

/// OCSF 1.1 severity_id: 1 informational, 2 low, 3 medium, 4 high, 5 critical.
fn ocsf_severity(s: Severity) -> u8 {
    match s {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// The alert as an OCSF 1.1 Detection Finding (class_uid 2004, activity Create).
pub fn ocsf(a: &Alert) -> Value {
    let f = &a.finding;
    let (kind, title) = taxonomy(f.rule);
    let ms = |secs: u64| secs.saturating_mul(1_000);
    let endpoint = |ip: Option<std::net::IpAddr>, port: Option<u16>| {
        let mut e = json!({});
        if let Some(ip) = ip {
            e["ip"] = ip.to_string().into();
        }
        if let Some(p) = port {
            e["port"] = p.into();
        }
        e
    };
    let mut src = endpoint(f.workload, None);
    if let Some(i) = &f.interface_id {
        src["interface_uid"] = i.clone().into();
    }
    if let Some(i) = &f.instance_id {
        src["instance_uid"] = i.clone().into();
    }
    let mut evidence = json!({
        "src_endpoint": src,
        "dst_endpoint": endpoint(f.remote, f.remote_port),
        "connection_info": {"protocol_num": f.protocol, "direction_id": 2},
        "traffic": {"bytes_out": f.bytes, "packets": f.packets},
    });
    if let Some(e) = &f.evidence {
        evidence["data"] = json!({
            "observed": e.observed, "baseline": e.baseline, "threshold": e.threshold, "unit": e.unit,
        });
    }
    let mut cloud = json!({"provider": "AWS"});
    if let Some(r) = &f.region {
        cloud["region"] = r.clone().into();
    }
    if let Some(acct) = &f.account_id {
        cloud["account"] = json!({"uid": acct, "type_id": 10});
    }
    if let Some(v) = &f.vpc_id {
        cloud["vpc_uid"] = v.clone().into();
    }
    // OCSF's action_id and disposition_id: 1 allowed, 2 blocked (denied), 0 unknown.
    let action_id = match f.action.as_deref() {
        Some("ACCEPT") => 1,
        Some("REJECT") => 2,
        _ => 0,
    };
    // An update of a finding that repeated is OCSF's Update activity of the same finding uid.
    let (activity_id, activity_name) = if a.repeated.is_some() {
        (2, "Update")
    } else {
        (1, "Create")
    };
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 200400 + activity_id,
        "type_name": format!("Detection Finding: {activity_name}"),
        "severity_id": ocsf_severity(f.severity),
        "severity": f.severity.as_str(),
        "status_id": 1,
        "status": "New",
        "time": ms(f.last_seen),
        "start_time": ms(f.first_seen),
        "end_time": ms(f.last_seen),
        "count": a.count(),
        "message": f.summary,
        "action_id": action_id,
        "disposition_id": action_id,
        "metadata": {
            "version": "1.1.0",
            "product": {"name": "egresswatch", "vendor_name": "egresswatch", "version": env!("CARGO_PKG_VERSION")},
            "uid": a.id,
        },
        "finding_info": {
            "uid": a.id,
            "title": title,
            "desc": f.summary,
            "types": [kind],
            "analytic": {"name": f.rule, "type_id": 1, "type": "Rule"},
            "first_seen_time": ms(f.first_seen),
            "last_seen_time": ms(f.last_seen),
        },
        "cloud": cloud,
        "evidences": [evidence],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Evidence, Finding};

    fn alert() -> Alert {
        Alert::single(Finding {
            workload: Some("10.0.1.5".parse().unwrap()),
            interface_id: Some("eni-1".into()),
            remote: Some("203.0.113.9".parse().unwrap()),
            remote_port: Some(443),
            protocol: Some(6),
            bytes: 512,
            first_seen: 1_764_547_200,
            last_seen: 1_764_550_800,
            records: 12,
            packets: 3,
            action: Some("ACCEPT".into()),
            account_id: Some("123456789012".into()),
            vpc_id: Some("vpc-1".into()),
            region: Some("eu-west-1".into()),
            evidence: Some(Evidence {
                observed: 0.93,
                baseline: Some(300.0),
                threshold: 0.85,
                unit: "share".into(),
            }),
            ..Finding::new(
                "beaconing",
                Severity::Medium,
                "beacon-like connections".into(),
            )
        })
    }

    #[test]
    fn the_document_speaks_rfc3339_labels_and_the_taxonomy() {
        let d = document(&alert());
        assert_eq!(d["type"], "Backdoor:EC2/C&CActivity.Beacon");
        assert_eq!(
            (d["severity"].as_str(), d["severity_value"].as_u64()),
            (Some("medium"), Some(5))
        );
        assert_eq!(d["first_seen"], "2025-12-01T00:00:00Z");
        assert_eq!(d["last_seen"], "2025-12-01T01:00:00Z");
        assert_eq!(d["action"], "allowed");
        assert_eq!(d["protocol_name"], "TCP");
        assert_eq!(
            (d["count"].as_u64(), d["folded"].as_bool()),
            (Some(1), Some(false))
        );
        assert_eq!(d["evidence"]["baseline"], 300.0);
        // What `score` reads back is the finding that went out.
        let back = Finding::from_json(&d).unwrap();
        assert_eq!(back, alert().finding);
    }

    #[test]
    fn ocsf_detection_finding() {
        let o = ocsf(&alert());
        assert_eq!(
            (o["class_uid"].as_u64(), o["type_uid"].as_u64()),
            (Some(2004), Some(200401))
        );
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["time"], 1_764_550_800_000u64);
        assert_eq!(
            o["finding_info"]["types"][0],
            "Backdoor:EC2/C&CActivity.Beacon"
        );
        assert_eq!(o["evidences"][0]["dst_endpoint"]["port"], 443);
        assert_eq!(o["cloud"]["account"]["uid"], "123456789012");
    }
}
