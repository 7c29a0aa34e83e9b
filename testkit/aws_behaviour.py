"""A layer in front of moto that adds what real AWS does and moto does not, for egresswatch's
provisioner tests. Each behaviour models a documented AWS behaviour (its source is named below
and written into every journal line) and is switched on by name in the JSON given on the
command line. Everything else is passed to moto unchanged.

Usage: aws_behaviour.py PORT UPSTREAM DIR BEHAVIOURS_JSON
Journal: DIR/journal.jsonl, one line per injected response: {"behaviour", "action", "source", ...}

Behaviours:
  eventual-consistency  {"misses": N}   Every EC2 call naming a VPC, subnet, internet gateway,
                                        route table, network ACL, NAT gateway, address
                                        allocation, security group or VPC endpoint this layer
                                        saw created answers that id's NotFound error for the
                                        first N calls that name it within 10 s of the create
                                        (filters excepted: a filtered Describe answers what it
                                        finds).
  notification-validation {"refusals": N}
                                        PutBucketNotificationConfiguration naming a queue whose
                                        policy was set through this layer is refused N times
                                        with "Unable to validate the following destination
                                        configurations".
  queue-deleted-recently {"seconds": S} CreateQueue of a name deleted through this layer less
                                        than S seconds ago (default 60) is refused with
                                        QueueDeletedRecently.
  address-unmapping     {"refusals": N} After DeleteNatGateway, the next N
                                        DetachInternetGateway calls are refused with
                                        DependencyViolation (mapped public addresses).
  role-propagation      {"refusals": N} CreateFlowLogs and CreateDomain with a role created
                                        by this run are refused N times each ("unable to
                                        assume").
  already-associated    {}              AssociateRouteTable on a subnet that already has an
                                        explicit association is refused (moto accepts it).
  release-after-nat     {"refusals": N} ReleaseAddress after a DeleteNatGateway fails with
                                        AuthFailure N times.
  (always)                              ListApps, ListSpaces and ListUserProfiles, which moto does
                                        not implement, answer an empty list for moto's domains;
                                        ListTags of a domain answers the tags it was created with;
                                        UpdateDomain (HTTP 500 in moto) is kept here and laid
                                        over what moto's DescribeDomain answers.
                                        A flow log to an S3 folder (arn:aws:s3:::bucket/folder/,
                                        which AWS accepts: VPC user guide, flow-logs-s3-create)
                                        reaches moto as the bucket alone (moto takes the folder
                                        for part of the bucket's name and refuses it) and is
                                        described with its folder. An S3 bucket without
                                        notifications is answered <NotificationConfiguration/>
                                        as S3 does (moto: <GetBucketNotificationResponse/>).
                                        A bucket policy's Deny conditioned on
                                        aws:SecureTransport is kept here and not given to
                                        moto, whose policy check ignores conditions and would
                                        refuse every request over its plain HTTP; GetBucketPolicy
                                        answers the policy as written.
  flow-log-delivery-failed {"answers": N}
                                        The next N DescribeFlowLogs say delivery FAILED with
                                        "Access error" (moto always delivers).
  domain-in-use         {"deleting_polls": N, "dependency_refusals": M}
                                        A created Studio domain has apps, a space and a user
                                        profile (moto has none of them); DeleteDomain is
                                        refused with ResourceInUse while any exists, apps and
                                        spaces take N polls to go (the user profile can be
                                        described and updated), the domain is reported
                                        Deleting N times after DeleteDomain, SageMaker's NFS
                                        security groups and an ENI linger in the VPC, and the
                                        subnets and VPC refuse deletion M times with
                                        DependencyViolation (mount targets leaving).
                                        UpdateDomain changing the network access type or
                                        subnets is refused while any app is InService.
  constrained-zone      {}              The zone of the first CreateSubnet this layer sees
                                        takes no new subnets: that call and every later one in
                                        the zone are refused as AWS refuses a constrained zone.
  studio-leftovers      {}              What Studio leaves in a VPC holds on: the interface a
                                        deleted domain leaves (domain-in-use) stays in-use,
                                        attached for SageMaker, until force-detached; the
                                        interface of every EFS mount target made through this
                                        layer is in-use and typed efs, described as EFS does,
                                        and goes only with its mount target. Deleting either
                                        while in use is refused (InvalidNetworkInterface.InUse).
"""
import http.server
import json
import re
import sys
import threading
import time
import urllib.parse
import uuid

import forwarding

PORT = int(sys.argv[1])
UPSTREAM = urllib.parse.urlparse(sys.argv[2])
DIR = sys.argv[3]
ON = json.loads(sys.argv[4])
LOCK = threading.Lock()

SOURCES = {
    "eventual-consistency": "ec2/latest/devguide/eventual-consistency.html; boto/boto3#779; hashicorp/terraform#7104 and PR #7156; hashicorp/terraform-provider-aws PR #19426",
    "notification-validation": "pulumi/pulumi-aws#1895; aws/aws-cdk#18090; SQS SetQueueAttributes: attribute changes take up to 60 seconds to propagate",
    "queue-deleted-recently": "SQS API reference, CreateQueue: after deleting a queue, wait at least 60 seconds before creating one with the same name (QueueDeletedRecently)",
    "address-unmapping": "hashicorp/terraform#1325 (DetachInternetGateway DependencyViolation: Network vpc-... has some mapped public address(es))",
    "role-propagation": "hashicorp/terraform-provider-aws#29323 (CreateFlowLogs InvalidParameter: Unable to assume given IAM role); hashicorp/terraform-provider-aws#26429; hashicorp/terraform#2869",
    "already-associated": "hashicorp/terraform-provider-aws#73 and PR #6999 (Resource.AlreadyAssociated; ReplaceRouteTableAssociation is the call)",
    "release-after-nat": "hashicorp/terraform-provider-aws#49299 (ReleaseAddress AuthFailure after the NAT gateway is deleted)",
    "flow-log-delivery-failed": "ec2 API reference, FlowLog: DeliverLogsStatus SUCCESS | FAILED, DeliverLogsErrorMessage Rate limited | Access error | Unknown error",
    "constrained-zone": "hashicorp/terraform#3434 (Subnets can currently only be created in the following availability zones); EC2 user guide, AZ IDs: zone names map to different zones in each account",
    "studio-leftovers": "aws-samples/amazon-sagemaker-build-train-deploy:STUDIO_CLASSIC/cleanup/cleanup.py (force-detaches SageMaker's ENIs, deletes EFS mount targets); EFS user guide, mount targets: a mount target's network interface is requester-managed and deleted with it",
    "domain-in-use": "aws-cloudformation/cloudformation-coverage-roadmap#1754; aws-samples/amazon-sagemaker-build-train-deploy:STUDIO_CLASSIC/cleanup/cleanup.py; aws-samples/amazon-sagemaker-studio-vpc-networkfirewall:functions/test/sagemakerdomain.py",
}

# The SageMaker listings moto lacks, with the key of their reply.
LISTS = {"ListApps": "Apps", "ListSpaces": "Spaces", "ListUserProfiles": "UserProfiles"}

# UpdateDomain's changes by domain id, laid over moto's DescribeDomain.
domain_updates = {}
# The tags each domain was created with, by ARN (moto's ListTags fails for domains).
domain_tags = {}


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


# State the behaviours keep.
misses = {}  # resource id -> (NotFound answers still to give, when it was created)
roles = set()  # role ARNs created through this layer
role_refusals = {}  # (action, role arn) -> refusals still to give
release_refusals = [0]
unmapping_refusals = [0]
queue_policies = {}  # queue ARN -> PutBucketNotificationConfiguration refusals still to give
deleted_queues = {}  # queue name -> when it was deleted (time.monotonic())
domains = {}  # domain id -> {"vpc", "subnets", "apps", "spaces", "profiles", "deleting", ...}
dependency_refusals = {}  # resource id -> DependencyViolation answers still to give
sagemaker_enis = {}  # interface id -> whether SageMaker still holds it attached
mount_target_enis = {}  # interface id -> (mount target id, file system id)
constrained = []  # the zone (name, id) that takes no new subnets, once chosen


def journal(behaviour, action, **more):
    line = {"behaviour": behaviour, "action": action, "source": SOURCES[behaviour]}
    line.update(more)
    with open(f"{DIR}/journal.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def ec2_error(code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return 400, {"Content-Type": "text/xml"}, body


def json_error(kind, message):
    body = json.dumps({"__type": kind, "message": message}).encode()
    return 400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": kind}, body


def sqs_error(code, message):
    """An SQS error as its JSON protocol answers it, with the query-compatible code header."""
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
    return 400, {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"AWS.SimpleQueueService.{code};Sender"}, body


def json_ok(value):
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(value).encode()


def upstream(method, path, headers, body):
    return forwarding.upstream(UPSTREAM, method, path, headers, body)


def ec2_call(params):
    """An EC2 call of this layer's own, straight to moto (which does not check signatures)."""
    params = dict(params, Version="2016-11-15")
    body = urllib.parse.urlencode(params).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
    }
    return upstream("POST", "/", headers, body)[2].decode()


def apps_of(d, profile=None, space=None):
    return [
        a
        for a in d["apps"]
        if a["Status"] != "Deleted"
        and (profile is None or a.get("UserProfileName") == profile)
        and (space is None or a.get("SpaceName") == space)
    ]


def age(d):
    """One poll passes: apps and spaces that are being deleted get closer to gone."""
    for a in d["apps"]:
        if a["Status"] == "Deleting":
            a["polls"] -= 1
            if a["polls"] <= 0:
                a["Status"] = "Deleted"
    for s in list(d["spaces"]):
        if s["Status"] == "Deleting":
            s["polls"] -= 1
            if s["polls"] <= 0:
                d["spaces"].remove(s)


def sagemaker(action, req):
    """Handles the SageMaker calls of a domain in use; None passes the call to moto."""
    did = req.get("DomainId") or req.get("DomainIdEquals")
    if action == "ListTags" and ":domain/" in req.get("ResourceArn", ""):
        return json_ok({"Tags": domain_tags.get(req["ResourceArn"], [])})
    if action == "UpdateDomain" and "domain-in-use" in ON and did in domains:
        running = [x for x in domains[did]["apps"] if x["Status"] == "InService"]
        if running and ("AppNetworkAccessType" in req or "SubnetIds" in req):
            journal("domain-in-use", action, refused="ValidationException", apps=len(running))
            return json_error("ValidationException", f"Domain {did} has apps in InService status. Delete all apps before updating AppNetworkAccessType or SubnetIds.")
    if action == "UpdateDomain":
        merge(domain_updates.setdefault(did, {}), {k: v for k, v in req.items() if k not in ("DomainId", "DomainSettingsForUpdate")})
        return json_ok({"DomainArn": f"arn:aws:sagemaker:us-east-1:123456789012:domain/{did}"})
    if action in LISTS and did not in domains:
        # moto answers these with HTTP 500 (not implemented) and cannot hold apps, spaces or
        # user profiles: for its domains the truthful answer is an empty list.
        return json_ok({LISTS[action]: []})
    if "domain-in-use" not in ON:
        return None
    polls = ON["domain-in-use"].get("deleting_polls", 2)
    d = domains.get(did)
    if action == "ListApps" and d is not None:
        age(d)
        return json_ok({"Apps": [{k: v for k, v in a.items() if k != "polls"} for a in d["apps"]]})
    if action == "DeleteApp" and d is not None:
        for a in d["apps"]:
            if a["AppName"] == req.get("AppName") and a["AppType"] == req.get("AppType") and a["Status"] == "InService":
                a["Status"] = "Deleting"
                a["polls"] = polls
                return json_ok({})
        return json_error("ResourceNotFound", f"App {req.get('AppName')} does not exist or is being deleted")
    if action == "ListSpaces" and d is not None:
        age(d)
        return json_ok({"Spaces": [{"DomainId": did, "SpaceName": s["SpaceName"], "Status": s["Status"]} for s in d["spaces"]]})
    if action == "DeleteSpace" and d is not None:
        name = req.get("SpaceName")
        if apps_of(d, space=name):
            journal("domain-in-use", action, refused="ResourceInUse")
            return json_error("ResourceInUse", f"Space {name} has apps that are not deleted")
        for s in d["spaces"]:
            if s["SpaceName"] == name and s["Status"] == "InService":
                s["Status"] = "Deleting"
                s["polls"] = polls
                return json_ok({})
        return json_error("ResourceNotFound", f"Space {name} does not exist")
    if action == "DescribeUserProfile" and d is not None:
        name = req.get("UserProfileName")
        if name not in d["profiles"]:
            return json_error("ResourceNotFound", f"User profile {name} does not exist")
        return json_ok({"DomainId": did, "UserProfileName": name, "Status": "InService", "UserSettings": d["settings"].get(name, {})})
    if action == "UpdateUserProfile" and d is not None:
        name = req.get("UserProfileName")
        if name not in d["profiles"]:
            return json_error("ResourceNotFound", f"User profile {name} does not exist")
        merge(d["settings"].setdefault(name, {}), req.get("UserSettings", {}))
        return json_ok({"UserProfileArn": f"arn:aws:sagemaker:us-east-1:123456789012:user-profile/{did}/{name}"})
    if action == "ListUserProfiles" and d is not None:
        return json_ok({"UserProfiles": [{"DomainId": did, "UserProfileName": p, "Status": "InService"} for p in d["profiles"]]})
    if action == "DeleteUserProfile" and d is not None:
        name = req.get("UserProfileName")
        if apps_of(d, profile=name):
            journal("domain-in-use", action, refused="ResourceInUse")
            return json_error("ResourceInUse", f"User profile {name} has apps that are not deleted")
        if name in d["profiles"]:
            d["profiles"].remove(name)
            return json_ok({})
        return json_error("ResourceNotFound", f"User profile {name} does not exist")
    if action == "DeleteDomain" and d is not None and not d["deleted"]:
        if apps_of(d) or d["spaces"] or d["profiles"]:
            journal("domain-in-use", action, refused="ResourceInUse", apps=len(apps_of(d)), spaces=len(d["spaces"]), profiles=len(d["profiles"]))
            return json_error("ResourceInUse", f"Domain {did} has apps, spaces or user profiles that are not deleted")
        return None
    if action == "DescribeDomain" and d is not None and d["deleted"] and d["deleting"] > 0:
        d["deleting"] -= 1
        journal("domain-in-use", action, status="Deleting")
        return json_ok({"DomainId": did, "DomainName": d["name"], "Status": "Deleting", "VpcId": d["vpc"], "AppNetworkAccessType": "VpcOnly"})
    if action == "ListDomains":
        return None
    return None


def after_sagemaker(action, req, status, data):
    if action == "CreateDomain" and status == 200:
        arn = json.loads(data or b"{}").get("DomainArn")
        if arn:
            domain_tags[arn] = req.get("Tags", [])
    if "domain-in-use" not in ON or status != 200:
        return
    cfg = ON["domain-in-use"]
    if action == "CreateDomain":
        reply = json.loads(data or b"{}")
        did = reply.get("DomainId") or reply.get("DomainArn", "").rsplit("/", 1)[-1]
        domains[did] = {
            "name": req.get("DomainName"),
            "vpc": req.get("VpcId"),
            "subnets": req.get("SubnetIds", []),
            "apps": [
                {"DomainId": did, "UserProfileName": "analyst", "AppType": "JupyterServer", "AppName": "default", "Status": "InService"},
                {"DomainId": did, "UserProfileName": "analyst", "AppType": "KernelGateway", "AppName": "datascience-1-0-ml-t3-medium", "Status": "InService"},
                {"DomainId": did, "SpaceName": "team-space", "AppType": "JupyterLab", "AppName": "default", "Status": "InService"},
            ],
            "spaces": [{"SpaceName": "team-space", "Status": "InService"}],
            "profiles": ["analyst"],
            "settings": {},
            "deleted": False,
            "deleting": cfg.get("deleting_polls", 2),
        }
    if action == "DeleteDomain":
        did = req.get("DomainId")
        d = domains.get(did)
        if d is None:
            return
        d["deleted"] = True
        # What SageMaker leaves behind: its NFS security groups, referencing each other, and
        # an interface in a domain subnet.
        made = []
        ids = []
        for direction in ("inbound", "outbound"):
            text = ec2_call({"Action": "CreateSecurityGroup", "GroupName": f"security-group-for-{direction}-nfs-{did}", "GroupDescription": "[DO NOT DELETE] Security Group that allows " + direction + " NFS traffic for SageMaker Notebooks Domain", "VpcId": d["vpc"]})
            m = re.search(r"<groupId>([^<]+)</groupId>", text)
            if m:
                ids.append(m.group(1))
                made.append(m.group(1))
        if len(ids) == 2:
            ec2_call({"Action": "AuthorizeSecurityGroupIngress", "GroupId": ids[0], "IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.FromPort": "2049", "IpPermissions.1.ToPort": "2049", "IpPermissions.1.Groups.1.GroupId": ids[1]})
            ec2_call({"Action": "AuthorizeSecurityGroupEgress", "GroupId": ids[1], "IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.FromPort": "2049", "IpPermissions.1.ToPort": "2049", "IpPermissions.1.Groups.1.GroupId": ids[0]})
        if d["subnets"]:
            text = ec2_call({"Action": "CreateNetworkInterface", "SubnetId": d["subnets"][0], "Description": f"[DO NOT DELETE] ENI managed by SageMaker Studio domain {did}"})
            m = re.search(r"<networkInterfaceId>([^<]+)</networkInterfaceId>", text)
            if m:
                made.append(m.group(1))
                if "studio-leftovers" in ON:
                    sagemaker_enis[m.group(1)] = True
        refusals = cfg.get("dependency_refusals", 2)
        for sid in d["subnets"]:
            dependency_refusals[sid] = refusals
        dependency_refusals[d["vpc"]] = refusals
        journal("domain-in-use", action, lingering=made)


# The element of a create's answer holding the new resource's id (the first one in the
# answer: later ones name its parents).
CREATED = {
    "CreateVpc": "vpcId",
    "CreateSubnet": "subnetId",
    "CreateInternetGateway": "internetGatewayId",
    "CreateRouteTable": "routeTableId",
    "CreateNetworkAcl": "networkAclId",
    "CreateNatGateway": "natGatewayId",
    "AllocateAddress": "allocationId",
    "CreateSecurityGroup": "groupId",
    "CreateVpcEndpoint": "vpcEndpointId",
}


def not_found(action, rid):
    """The error code and message EC2 answers for an id it does not know (yet)."""
    if rid.startswith("nat-"):
        if action.startswith("Describe") or action == "DeleteNatGateway":
            return "NatGatewayNotFound", f"The Nat Gateway {rid} was not found"
        return "InvalidNatGatewayID.NotFound", f"The natGateway ID '{rid}' does not exist"
    kinds = {
        "vpc-": ("InvalidVpcID.NotFound", "vpc ID"),
        "subnet-": ("InvalidSubnetID.NotFound", "subnet ID"),
        "igw-": ("InvalidInternetGatewayID.NotFound", "internetGateway ID"),
        "rtb-": ("InvalidRouteTableID.NotFound", "routeTable ID"),
        "acl-": ("InvalidNetworkAclID.NotFound", "networkAcl ID"),
        "eipalloc-": ("InvalidAllocationID.NotFound", "allocation ID"),
        "vpce-": ("InvalidVpcEndpointId.NotFound", "Vpc Endpoint Id"),
    }
    if rid.startswith("sg-"):
        return "InvalidGroup.NotFound", f"The security group '{rid}' does not exist"
    for prefix, (code, what) in kinds.items():
        if rid.startswith(prefix):
            return code, f"The {what} '{rid}' does not exist"
    return "InvalidID.NotFound", f"The ID '{rid}' does not exist"


def ec2(action, params):
    """Refuses an EC2 call as AWS would; None passes it to moto."""
    values = set(params.values())
    if "eventual-consistency" in ON:
        named = {v for k, v in params.items() if not k.startswith("Filter.")}
        for rid in named:
            left, made = misses.get(rid, (0, 0))
            if left > 0 and time.monotonic() - made < 10:
                misses[rid] = (left - 1, made)
                journal("eventual-consistency", action, resource=rid)
                return ec2_error(*not_found(action, rid))
    if "address-unmapping" in ON and action == "DetachInternetGateway" and unmapping_refusals[0] > 0:
        unmapping_refusals[0] -= 1
        journal("address-unmapping", action, vpc=params.get("VpcId"))
        return ec2_error("DependencyViolation", f"Network {params.get('VpcId')} has some mapped public address(es). Please unmap those public address(es) before detaching the gateway.")
    if "role-propagation" in ON and action == "CreateFlowLogs":
        arn = params.get("DeliverLogsPermissionArn")
        key = (action, arn)
        if arn in roles and role_refusals.get(key, ON["role-propagation"].get("refusals", 2)) > 0:
            role_refusals[key] = role_refusals.get(key, ON["role-propagation"].get("refusals", 2)) - 1
            journal("role-propagation", action, role=arn)
            return ec2_error("InvalidParameter", f"Unable to assume given IAM role: '{arn}'")
    if "already-associated" in ON and action == "AssociateRouteTable" and params.get("SubnetId"):
        subnet = params["SubnetId"]
        text = ec2_call({"Action": "DescribeRouteTables", "Filter.1.Name": "association.subnet-id", "Filter.1.Value.1": subnet})
        m = re.search(r"<routeTableId>([^<]+)</routeTableId>", text)
        if m:
            journal("already-associated", action, subnet=subnet, associated_with=m.group(1))
            return ec2_error("Resource.AlreadyAssociated", f"the specified association for route table {m.group(1)} conflicts with an existing association")
    if "release-after-nat" in ON and action == "ReleaseAddress" and release_refusals[0] > 0:
        release_refusals[0] -= 1
        journal("release-after-nat", action, allocation=params.get("AllocationId"))
        return ec2_error("AuthFailure", "You do not have permission to access the specified resource.")
    if "studio-leftovers" in ON and action == "DetachNetworkInterface":
        eni = "eni-" + params.get("AttachmentId", "").rsplit("-", 1)[-1]
        if sagemaker_enis.get(eni):
            sagemaker_enis[eni] = False
            journal("studio-leftovers", action, interface=eni, force=params.get("Force"))
            return 200, {"Content-Type": "text/xml"}, b'<?xml version="1.0" encoding="UTF-8"?><DetachNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><return>true</return></DetachNetworkInterfaceResponse>'
    if "studio-leftovers" in ON and action == "DeleteNetworkInterface":
        eni = params.get("NetworkInterfaceId")
        if sagemaker_enis.get(eni) or eni in mount_target_enis:
            journal("studio-leftovers", action, interface=eni, refused="InvalidNetworkInterface.InUse")
            return ec2_error("InvalidNetworkInterface.InUse", f"The network interface {eni} is currently in use.")
    if "constrained-zone" in ON and action == "CreateSubnet":
        text = ec2_call({"Action": "DescribeAvailabilityZones"})
        zones = re.findall(r"<zoneName>([^<]+)</zoneName>.*?<zoneId>([^<]+)</zoneId>", text, re.S)
        asked = next(((n, i) for n, i in zones if params.get("AvailabilityZone") == n or params.get("AvailabilityZoneId") == i), None)
        if asked and not constrained:
            constrained.append(asked)
        if asked and asked == constrained[0]:
            others = ", ".join(n for n, _ in zones if n != asked[0])
            journal("constrained-zone", action, zone=asked[0], zone_id=asked[1])
            return ec2_error("InvalidParameterValue", f"Value ({asked[0]}) for parameter availabilityZone is invalid. Subnets can currently only be created in the following availability zones: {others}.")
    if action in ("DeleteSubnet", "DeleteVpc"):
        rid = params.get("SubnetId") or params.get("VpcId")
        if dependency_refusals.get(rid, 0) > 0:
            dependency_refusals[rid] -= 1
            journal("domain-in-use", action, resource=rid, refused="DependencyViolation")
            return ec2_error("DependencyViolation", f"The {'subnet' if action == 'DeleteSubnet' else 'vpc'} '{rid}' has dependencies and cannot be deleted.")
    return None


def held_interface(item, eni):
    """One interface of a DescribeNetworkInterfaces answer as AWS shows it while held."""
    if eni in mount_target_enis:
        target, fs = mount_target_enis[eni]
        description, kind, attachment = f"EFS mount target for {fs} ({target})", "efs", f"ela-attach-{eni[4:]}"
    else:
        description, kind, attachment = None, "interface", f"eni-attach-{eni[4:]}"
    item = item.replace("<status>available</status>", "<status>in-use</status>", 1)
    item = item.replace("<requesterManaged>false</requesterManaged>", "<requesterManaged>true</requesterManaged>", 1)
    item = re.sub(r"<interfaceType>[^<]*</interfaceType>", f"<interfaceType>{kind}</interfaceType>", item, count=1)
    if description is not None:
        item = re.sub(r"<description>[^<]*</description>|<description/>", "", item, count=1)
        item = item.replace("<item>", f"<item><description>{description}</description>", 1)
    return item.replace("<item>", f"<item><attachment><attachmentId>{attachment}</attachmentId><deviceIndex>1</deviceIndex><instanceOwnerId>amazon-aws</instanceOwnerId><status>attached</status></attachment>", 1)


def patch_ec2(action, status, data):
    """Rewrites an EC2 answer as a behaviour needs; returns the body to send."""
    if "studio-leftovers" in ON and action == "DescribeNetworkInterfaces" and status == 200:
        text = data.decode()
        held = [e for e, on in sagemaker_enis.items() if on] + list(mount_target_enis)
        for eni in held:
            at = text.find(f"<networkInterfaceId>{eni}</networkInterfaceId>")
            if at < 0:
                continue
            # moto writes each interface's elements in name order, from availabilityZone to vpcId.
            start = text.rfind("<item><availabilityZone>", 0, at)
            end = text.find("</vpcId></item>", at)
            if start < 0 or end < 0:
                continue
            end += len("</vpcId></item>")
            text = text[:start] + held_interface(text[start:end], eni) + text[end:]
        return text.encode()
    if "flow-log-delivery-failed" in ON and action == "DescribeFlowLogs" and status == 200:
        left = ON["flow-log-delivery-failed"].setdefault("answers", 2)
        if left > 0 and b"<flowLogId>" in data:
            ON["flow-log-delivery-failed"]["answers"] = left - 1
            text = data.decode()
            text = re.sub(r"<deliverLogsStatus>[^<]*</deliverLogsStatus>", "", text)
            text = re.sub(r"(<flowLogId>[^<]+</flowLogId>)", r"\1<deliverLogsStatus>FAILED</deliverLogsStatus><deliverLogsErrorMessage>Access error</deliverLogsErrorMessage>", text)
            journal("flow-log-delivery-failed", action)
            return text.encode()
    return data


# Bucket path -> the policy as written, when moto was given it without its TLS deny.
bucket_policies = {}

# Flow-log id -> the S3 destination with its folder, which moto was not given.
s3_folders = {}


def s3_folder_out(action, params, headers, body):
    """CreateFlowLogs to an S3 folder: the request moto accepts, and the folder to restore."""
    dest = params.get("LogDestination", "")
    if action != "CreateFlowLogs" or params.get("LogDestinationType") != "s3" or "/" not in dest.split(":::", 1)[-1]:
        return headers, body, None
    bucket = dest.split(":::", 1)[0] + ":::" + dest.split(":::", 1)[1].split("/", 1)[0]
    body = urllib.parse.urlencode(dict(params, LogDestination=bucket)).encode()
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    headers["Content-Length"] = str(len(body))
    return headers, body, dest


def s3_folder_back(action, status, data, folder):
    if status != 200:
        return data
    text = data.decode(errors="replace")
    if action == "CreateFlowLogs" and folder:
        for fid in re.findall(r"<item>(fl-[^<]+)</item>", text):
            s3_folders[fid] = folder
    if action == "DescribeFlowLogs" and s3_folders:
        # Within a flow log's element its id comes before its destination.
        current = [None]

        def restore(m):
            if m.group(1) is not None:
                current[0] = m.group(1)
                return m.group(0)
            folder = s3_folders.get(current[0])
            return f"<logDestination>{folder}</logDestination>" if folder else m.group(0)
        text = re.sub(r"<flowLogId>([^<]+)</flowLogId>|<logDestination>[^<]*</logDestination>", restore, text)
        return text.encode()
    return data


def after_ec2(action, params, status, data):
    if status != 200:
        return
    text = data.decode(errors="replace")
    if "eventual-consistency" in ON:
        n = ON["eventual-consistency"].get("misses", 2)
        tag = CREATED.get(action)
        m = re.search(f"<{tag}>([^<]+)</{tag}>", text) if tag else None
        if m:
            misses[m.group(1)] = (n, time.monotonic())
    if "release-after-nat" in ON and action == "DeleteNatGateway":
        release_refusals[0] = ON["release-after-nat"].get("refusals", 2)
    if "address-unmapping" in ON and action == "DeleteNatGateway":
        unmapping_refusals[0] = ON["address-unmapping"].get("refusals", 2)


class Handler(forwarding.Handler):
    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        if parts.query == "policy" and parts.path in bucket_policies:
            self.answer(200, {"Content-Type": "application/json"}, bucket_policies[parts.path])
            return
        status, out, data = upstream("GET", self.path, dict(self.headers), None)
        # moto answers a bucket without notifications with <GetBucketNotificationResponse/>;
        # S3 answers <NotificationConfiguration/> (S3 API reference,
        # GetBucketNotificationConfiguration), the only root the SDKs parse.
        if "notification" in urllib.parse.urlsplit(self.path).query and b"<GetBucketNotificationResponse" in data:
            data = b'<?xml version="1.0" encoding="UTF-8"?>\n<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
        self.answer(status, out, data)

    def forward(self, method):
        """S3's other verbs, passed through as they are."""
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n) if n else None
        headers = dict(self.headers)
        parts = urllib.parse.urlsplit(self.path)
        if method == "PUT" and parts.query == "notification" and body and "notification-validation" in ON:
            text = body.decode(errors="replace")
            for queue, left in queue_policies.items():
                if left > 0 and f":{queue}</Queue>" in text:
                    queue_policies[queue] = left - 1
                    journal("notification-validation", "PutBucketNotificationConfiguration", queue=queue)
                    error = (
                        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code>'
                        "<Message>Unable to validate the following destination configurations</Message>"
                        f"<ArgumentName1>{queue}</ArgumentName1><ArgumentValue1>Permissions on the destination queue do not allow S3 to publish notifications from this bucket</ArgumentValue1>"
                        f"<RequestId>{uuid.uuid4()}</RequestId></Error>"
                    ).encode()
                    self.answer(400, {"Content-Type": "application/xml"}, error)
                    return
        if method == "DELETE" and parts.path.startswith("/2015-02-01/mount-targets/"):
            target = parts.path.rsplit("/", 1)[-1]
            for eni, (t, _) in list(mount_target_enis.items()):
                if t == target:
                    del mount_target_enis[eni]
                    journal("studio-leftovers", "DeleteMountTarget", mount_target=target, interface=eni)
        if parts.query == "policy" and method == "DELETE":
            bucket_policies.pop(parts.path, None)
        if parts.query == "policy" and method == "PUT" and body:
            policy = json.loads(body)
            kept = [st for st in policy.get("Statement", []) if not (st.get("Effect") == "Deny" and "aws:SecureTransport" in json.dumps(st.get("Condition", {})))]
            if len(kept) != len(policy.get("Statement", [])):
                bucket_policies[parts.path] = body
                body = json.dumps(dict(policy, Statement=kept)).encode()
                headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-md5") and not k.lower().startswith("x-amz-checksum")}
                headers["Content-Length"] = str(len(body))
            else:
                bucket_policies.pop(parts.path, None)
        with LOCK:
            status, out, data = upstream(method, self.path, headers, body)
        if method == "HEAD":
            # No body, but the length the GET would have.
            self.send_response(status)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.answer(status, out, data)

    def sqs(self, action, headers, body):
        req = json.loads(body or b"{}")
        name = req.get("QueueName") or (req.get("QueueUrl") or "").rstrip("/").rsplit("/", 1)[-1]
        if action == "CreateQueue" and "queue-deleted-recently" in ON:
            deleted = deleted_queues.get(name)
            if deleted is not None and time.monotonic() - deleted < ON["queue-deleted-recently"].get("seconds", 60):
                journal("queue-deleted-recently", action, queue=name)
                self.answer(*sqs_error("QueueDeletedRecently", "You must wait 60 seconds after deleting a queue before you can create another with the same name."))
                return
        status, out, data = upstream("POST", self.path, headers, body)
        if status == 200:
            if action == "DeleteQueue":
                deleted_queues[name] = time.monotonic()
            sets_policy = "Policy" in (req.get("Attributes") or {})
            if "notification-validation" in ON and action in ("CreateQueue", "SetQueueAttributes") and sets_policy:
                queue_policies[name] = ON["notification-validation"].get("refusals", 2)
        self.answer(status, out, data)

    def do_PUT(self):
        self.forward("PUT")

    def do_DELETE(self):
        self.forward("DELETE")

    def do_HEAD(self):
        self.forward("HEAD")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        target = self.headers.get("X-Amz-Target", "")
        with LOCK:
            if target.startswith("AmazonSQS."):
                self.sqs(target.split(".", 1)[1], headers, body)
                return
            if target.startswith("SageMaker."):
                action = target.split(".", 1)[1]
                req = json.loads(body or b"{}")
                if "role-propagation" in ON and action == "CreateDomain":
                    arn = (req.get("DefaultUserSettings") or {}).get("ExecutionRole")
                    key = (action, arn)
                    left = role_refusals.get(key, ON["role-propagation"].get("refusals", 2))
                    if arn in roles and left > 0:
                        role_refusals[key] = left - 1
                        journal("role-propagation", action, role=arn)
                        self.answer(*json_error("ValidationException", f'The execution role ARN "{arn}" is invalid. Please ensure that the role exists and that its trust relationship policy allows the action "sts:AssumeRole" for the service principal "sagemaker.amazonaws.com".'))
                        return
                injected = sagemaker(action, req)
                if injected is not None:
                    self.answer(*injected)
                    return
                status, out, data = upstream("POST", self.path, headers, body)
                after_sagemaker(action, req, status, data)
                if action == "DescribeDomain" and status == 200 and req.get("DomainId") in domain_updates:
                    data = json.dumps(merge(json.loads(data), domain_updates[req["DomainId"]])).encode()
                self.answer(status, out, data)
                return
            if self.path.startswith("/2015-02-01/mount-targets"):
                status, out, data = upstream("POST", self.path, headers, body)
                if status == 200 and "studio-leftovers" in ON:
                    made = json.loads(data)
                    mount_target_enis[made["NetworkInterfaceId"]] = (made["MountTargetId"], made["FileSystemId"])
                self.answer(status, out, data)
                return
            params = {}
            if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                params = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}
            action = params.get("Action", "")
            injected = ec2(action, params) if params.get("Version") == "2016-11-15" else None
            if injected is not None:
                self.answer(*injected)
                return
            headers, body, folder = s3_folder_out(action, params, headers, body)
            status, out, data = upstream("POST", self.path, headers, body)
            if params.get("Version") == "2016-11-15":
                after_ec2(action, params, status, data)
                data = patch_ec2(action, status, data)
                data = s3_folder_back(action, status, data, folder)
            if action == "CreateRole" and status == 200:
                m = re.search(r"<Arn>([^<]+)</Arn>", data.decode(errors="replace"))
                if m:
                    roles.add(m.group(1))
            self.answer(status, out, data)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
