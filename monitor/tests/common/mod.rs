//! Shared by the sink tests: a small flow-log file with two findings in it (and one repeat,
//! which makes a third alert: the update that counts it) and a file-source config for it.

use egresswatch_monitor::config::Config;

const FLOWS: &str = "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end
eni-nat 10.0.1.5 10.0.0.220 40000 22 6 5000 ACCEPT OK 10.0.1.5 198.51.100.22 1764150000 1764150060
eni-nat 10.0.1.5 10.0.0.220 40001 53 17 80 ACCEPT OK 10.0.1.5 8.8.8.8 1764150000 1764150060
eni-nat 10.0.1.5 10.0.0.220 40002 443 6 900 ACCEPT OK 10.0.1.5 93.184.216.34 1764150000 1764150060
eni-nat 10.0.1.5 10.0.0.220 40003 22 6 5000 ACCEPT OK 10.0.1.5 198.51.100.22 1764150060 1764150120
";

pub fn config(dir: &std::path::Path, alerts: &str) -> Config {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("flows.log"), FLOWS).unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
source = "file:{flows}"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[alerts]
stdout = false
{alerts}
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
        flows = dir.join("flows.log").display()
    );
    Config::from_toml(&toml, "test.toml").unwrap()
}
