"""Evaluates the calls a SageMaker Studio session makes, and the escapes it must not make,
against the Studio execution role's rendered policy and the permissions boundary it runs
under, the way IAM does: an action with no resource type is matched only by Resource "*", a
resource ARN only by a statement naming its pattern, conditions by their operators, an explicit
Deny anywhere wins, and a call is allowed only if the role's policy and the boundary both allow
it. The resource types and ARN formats come from AWS's Service Authorization Reference as
policy_sentry ships it, so a request naming an action or resource type AWS does not have is an
error of this file, not a pass.

Usage: iam_evaluate.py POLICIES_JSON PARTITION REGION ACCOUNT
(POLICIES_JSON: `egresswatch provision policies -o json`). Exits 1 on any call whose result
differs from what a working, fenced Studio needs.
"""
import fnmatch
import json
import re
import sys

from policy_sentry.querying.actions import get_action_data


def arn_formats(action):
    service, name = action.split(":", 1)
    rows = get_action_data(service, name).get(service, [])
    if not rows:
        sys.exit(f"iam_evaluate: {action} is not in the Service Authorization Reference")
    return [r["resource_arn_format"] for r in rows]


def check_request_shape(action, resources):
    """Each resource must be of a type the action takes; "*" only for resource-less actions."""
    formats = arn_formats(action)
    typed = [f for f in formats if f != "*"]
    for r in resources:
        if r == "*":
            if typed:
                sys.exit(f"iam_evaluate: {action} takes resource types {typed}; name one")
            continue
        if not any(re.fullmatch(re.sub(r"\\\$\\\{[^}]*\\\}", "[^:]*", re.escape(f)).replace("\\*", ".*"), r) for f in typed):
            sys.exit(f"iam_evaluate: {r} is not a resource type of {action} ({typed})")


def listify(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def matches_action(patterns, action):
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in listify(patterns))


def matches_resource(patterns, resource):
    # A resource-less action's request is "*", which only "*" covers.
    return any(p == "*" or (resource != "*" and fnmatch.fnmatchcase(resource, p)) for p in listify(patterns))


def condition_holds(operator, key, wanted, context):
    present = key in context
    if_exists = operator.endswith("IfExists")
    op = operator[: -len("IfExists")] if if_exists else operator
    qualifier = None
    if ":" in op:
        qualifier, op = op.split(":", 1)
    if op == "Null":
        return (str(wanted[0]).lower() == "true") == (not present)
    if not present:
        return if_exists or op.startswith(("StringNot", "ArnNot"))
    values = listify(context[key])
    negated = op.startswith(("StringNot", "ArnNot"))
    base = op.replace("Not", "", 1) if negated else op

    def one(v):
        if base in ("StringEquals", "ArnEquals"):
            return any(str(v) == str(w) for w in wanted)
        if base in ("StringLike", "ArnLike"):
            return any(fnmatch.fnmatchcase(str(v), str(w)) for w in wanted)
        if base == "Bool":
            return any(str(v).lower() == str(w).lower() for w in wanted)
        sys.exit(f"iam_evaluate: condition operator {operator} is not modelled")

    if qualifier == "ForAllValues":
        hit = all(one(v) for v in values)
    else:
        hit = any(one(v) for v in values)
    return not hit if negated else hit


def statement_applies(s, action, resource, context):
    if "Action" in s and not matches_action(s["Action"], action):
        return False
    if "NotAction" in s and matches_action(s["NotAction"], action):
        return False
    if "Resource" in s and not matches_resource(s["Resource"], resource):
        return False
    for operator, block in (s.get("Condition") or {}).items():
        for key, wanted in block.items():
            if not condition_holds(operator, key, listify(wanted), context):
                return False
    return True


def allowed(documents, boundary, action, resources, context):
    everything = documents + [boundary]
    for r in resources:
        for doc in everything:
            for s in listify(doc["Statement"]):
                if s["Effect"] == "Deny" and statement_applies(s, action, r, context):
                    return False
        for docs in (documents, [boundary]):
            if not any(s["Effect"] == "Allow" and statement_applies(s, action, r, context) for d in docs for s in listify(d["Statement"])):
                return False
    return True


def session(p, region, account):
    """(what, action, resources, context, allowed?) for a Studio session in a VpcOnly domain.
    Sources: SageMaker Role Manager persona "Run Studio Applications"; SageMaker developer
    guide, Amazon SageMaker Studio permissions (SMStudioAppPermissionsListAndDescribe) and
    Connect Studio notebooks in a VPC to external resources; the decision record's fence."""
    sm = f"arn:{p}:sagemaker:{region}:{account}"
    ec2 = f"arn:{p}:ec2:{region}:{account}"
    logs = f"arn:{p}:logs:{region}:{account}:log-group:/aws/sagemaker/studio"
    image = f"arn:{p}:ecr:{region}:081325390199:repository/sagemaker-distribution-prod"
    vpc_only = {"sagemaker:VpcSubnets": ["subnet-0a1b2c3d4e5f60001"]}
    return [
        ("Studio lists the user's apps", "sagemaker:ListApps", ["*"], {}, True),
        ("Studio lists domains", "sagemaker:ListDomains", ["*"], {}, True),
        ("Studio lists user profiles", "sagemaker:ListUserProfiles", ["*"], {}, True),
        ("Studio lists spaces", "sagemaker:ListSpaces", ["*"], {}, True),
        ("Studio reads its domain", "sagemaker:DescribeDomain", [f"{sm}:domain/d-abc123"], {}, True),
        ("Studio reads the user profile", "sagemaker:DescribeUserProfile", [f"{sm}:user-profile/d-abc123/analyst"], {}, True),
        ("a data scientist makes a JupyterLab space", "sagemaker:CreateSpace", [f"{sm}:space/d-abc123/analyst-space"], {}, True),
        ("and changes its instance type", "sagemaker:UpdateSpace", [f"{sm}:space/d-abc123/analyst-space"], {}, True),
        ("and deletes it", "sagemaker:DeleteSpace", [f"{sm}:space/d-abc123/analyst-space"], {}, True),
        ("and reads it", "sagemaker:DescribeSpace", [f"{sm}:space/d-abc123/analyst-space"], {}, True),
        ("starts JupyterLab in it", "sagemaker:CreateApp", [f"{sm}:app/d-abc123/analyst-space/jupyterlab/default"], {}, True),
        ("stops it", "sagemaker:DeleteApp", [f"{sm}:app/d-abc123/analyst-space/jupyterlab/default"], {}, True),
        ("reads the app's status", "sagemaker:DescribeApp", [f"{sm}:app/d-abc123/analyst-space/jupyterlab/default"], {}, True),
        ("pulls the SageMaker Distribution image", "ecr:BatchGetImage", [image], {}, True),
        ("gets an ECR token", "ecr:GetAuthorizationToken", ["*"], {}, True),
        ("writes the app's logs", "logs:PutLogEvents", [f"{logs}:log-stream:analyst/jupyterlab/default"], {}, True),
        ("makes the log stream", "logs:CreateLogStream", [f"{logs}:log-stream:analyst/jupyterlab/default"], {}, True),
        ("gets an interface in the stack's subnet (VpcOnly)", "ec2:CreateNetworkInterface",
         [f"{ec2}:network-interface/*", f"{ec2}:subnet/subnet-0a1b2c3d4e5f60001", f"{ec2}:security-group/sg-0123456789abcdef0"], {}, True),
        # The escapes the fence is there for.
        ("adds a gateway endpoint that bypasses the NAT", "ec2:CreateVpcEndpoint", [f"{ec2}:vpc/vpc-0e9ea2c1f2a3b4c5d", f"{ec2}:vpc-endpoint/*"], {}, False),
        ("adds a route to an internet gateway", "ec2:CreateRoute", [f"{ec2}:route-table/rtb-0123456789abcdef0"], {}, False),
        ("attaches an internet gateway", "ec2:AttachInternetGateway", [f"{ec2}:internet-gateway/igw-0123456789abcdef0", f"{ec2}:vpc/vpc-0e9ea2c1f2a3b4c5d"], {}, False),
        ("peers with another VPC", "ec2:CreateVpcPeeringConnection", [f"{ec2}:vpc/vpc-0e9ea2c1f2a3b4c5d", f"{ec2}:vpc-peering-connection/*"], {}, False),
        ("turns the domain to PublicInternetOnly", "sagemaker:UpdateDomain", [f"{sm}:domain/d-abc123"], {}, False),
        ("makes a domain of its own", "sagemaker:CreateDomain", [f"{sm}:domain/*"], {}, False),
        ("runs a training job outside the VPC", "sagemaker:CreateTrainingJob", [f"{sm}:training-job/exfil"], {}, False),
        ("runs one inside it (not a Studio app's right here)", "sagemaker:CreateTrainingJob", [f"{sm}:training-job/train"], vpc_only, False),
        ("makes a notebook instance with internet access", "sagemaker:CreateNotebookInstance", [f"{sm}:notebook-instance/nb"], {"sagemaker:DirectInternetAccess": "Enabled"}, False),
        ("makes itself a role", "iam:CreateRole", [f"arn:{p}:iam::{account}:role/escape"], {}, False),
        ("passes a role to another service", "iam:PassRole", [f"arn:{p}:iam::{account}:role/egresswatch/x-studio-execution"], {"iam:PassedToService": "ec2.amazonaws.com"}, False),
    ]


def self_check():
    """The evaluator refuses what IAM refuses: a List action scoped to an ARN (the defect the
    first Studio role had) and an allow the boundary lacks."""
    scoped = {"Statement": [{"Effect": "Allow", "Action": "sagemaker:ListApps", "Resource": "arn:aws:sagemaker:us-east-1:1:domain/*"}]}
    everything = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    nothing_of_ec2 = {"Statement": [{"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}]}
    ec2_any = {"Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}
    assert not allowed([scoped], everything, "sagemaker:ListApps", ["*"], {})
    assert not allowed([ec2_any], nothing_of_ec2, "ec2:CreateRoute", ["arn:aws:ec2:us-east-1:1:route-table/rtb-1"], {})
    assert allowed([ec2_any], everything, "ec2:CreateRoute", ["arn:aws:ec2:us-east-1:1:route-table/rtb-1"], {})
    null = {"Statement": [everything["Statement"][0], {"Effect": "Deny", "Action": "sagemaker:CreateTrainingJob", "Resource": "*", "Condition": {"Null": {"sagemaker:VpcSubnets": "true"}}}]}
    assert not allowed([null], everything, "sagemaker:CreateTrainingJob", ["x"], {})
    assert allowed([null], everything, "sagemaker:CreateTrainingJob", ["x"], {"sagemaker:VpcSubnets": ["s"]})


def main():
    path, partition, region, account = sys.argv[1:5]
    self_check()
    rendered = {p["name"]: p["document"] for p in json.load(open(path))}
    role = rendered["studio-execution-role"]
    boundary = rendered["role-boundary"]
    wrong = 0
    for what, action, resources, context, want in session(partition, region, account):
        check_request_shape(action, resources)
        got = allowed([role], boundary, action, resources, context)
        if got != want:
            wrong += 1
            print(f"  WRONG {what}: {action} on {resources} is {'allowed' if got else 'denied'}")
    total = len(session(partition, region, account))
    print(f"iam_evaluate: studio role ({partition}, {region}): {total - wrong} of {total} calls as a fenced Studio needs")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
