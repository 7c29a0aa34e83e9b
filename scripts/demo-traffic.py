"""Writes demo flow-log records for a provisioned stack into its log group, one stream per
ENI as AWS does, in the flow log's own format. Used by scripts/demo."""
import json
import sys
import time

import boto3

outputs = json.load(open(sys.argv[1]))
deny_path = sys.argv[2]
fields = [f[2:-1] for f in outputs["flow_log_format"].split()]
nat = outputs["nat_gateways"][0]
nat_eni, nat_ip = nat["network_interface_id"], nat["private_ip"]
base = outputs["private_subnets"][0]["cidr"].split("/")[0].rsplit(".", 1)[0]
workloads = [f"{base}.{i}" for i in (11, 12, 13)]
now = int(time.time()) - 300


def rec(eni, src, dst, sport, dport, proto, nbytes, action="ACCEPT", pkt_src=None, pkt_dst=None, svc="-"):
    v = {"version": "5", "account-id": outputs["account_id"], "interface-id": eni, "srcaddr": src,
         "dstaddr": dst, "srcport": str(sport), "dstport": str(dport), "protocol": str(proto),
         "packets": "10", "bytes": str(nbytes), "start": str(now), "end": str(now + 60),
         "action": action, "log-status": "OK", "pkt-srcaddr": pkt_src or src,
         "pkt-dstaddr": pkt_dst or dst, "pkt-dst-aws-service": svc}
    return " ".join(v.get(f, "-") for f in fields)


def via_nat(wl, remote, port, proto, nbytes):
    return [rec(nat_eni, wl, nat_ip, 40000, port, proto, nbytes, pkt_dst=remote),
            rec(nat_eni, nat_ip, remote, 40000, port, proto, nbytes)]


nat_lines, wl_lines = [], []
for wl in workloads:
    nat_lines += via_nat(wl, "151.101.0.223", 443, 6, 250_000)  # package installs (PyPI CDN)
wl_lines.append(rec("eni-0demo0000000000a", workloads[0], "52.216.10.10", 40100, 443, 6, 9_000_000, svc="S3"))
wl_lines.append(rec("eni-0demo0000000000a", workloads[0], f"{base}.200", 40101, 2049, 6, 40_000))
nat_lines += via_nat(workloads[1], "198.51.100.22", 22, 6, 48_000_000)  # scp out
nat_lines += via_nat(workloads[2], "8.8.8.8", 53, 17, 900)  # outside resolver
nat_lines += via_nat(workloads[2], "203.0.113.66", 443, 6, 3_000)  # deny-listed
wl_lines.append(rec("eni-0demo0000000000b", workloads[1], "198.51.100.9", 40102, 3389, 6, 60, action="REJECT"))
with open(deny_path, "w") as f:
    f.write("# demo deny list\n203.0.113.0/24\n")

logs = boto3.client("logs", region_name=outputs["region"])
group = outputs["log_group"]
for stream, lines in ((f"{nat_eni}-all", nat_lines), ("eni-0demo0000000000a-all", wl_lines[:2]), ("eni-0demo0000000000b-all", wl_lines[2:])):
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    ts = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": ts + i, "message": m} for i, m in enumerate(lines)])
print(f"wrote {len(nat_lines) + len(wl_lines)} records to {group}")
