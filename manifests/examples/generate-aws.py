#!/usr/bin/env python3
"""Writes the AWS CLI JSON of the demo cluster (demo-cluster.yaml) into ./aws and ./aws-udp53-missing:
one file per command, in the shape `aws ... --output json` prints (trimmed like
../shared/reference/aws-cli-examples, unknown fields matter to nobody), for an EKS cluster `demo` in
eu-west-1, account 111122223333.

  aws/                 the healthy setting: managed node group ng-general with the cluster security
                       group, Fargate profile fp-default, EKS default rules, default network ACL.
  aws-udp53-missing/   the same cluster, but ng-general's launch template gives the EC2 nodes their
                       own group sg-0e1f2a3b4c5d6node instead of the cluster security group, and the
                       cluster security group (on the micro-VMs, where CoreDNS runs) admits only
                       TCP 53 (and TCP 443) from it: node-group pods lose DNS over UDP only.

Run from anywhere; it rewrites the .json files of both directories (README.md files are kept)."""
import json, os, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ACCOUNT = "111122223333"
REGION = "eu-west-1"
VPC = "vpc-0d3e0c1a5e7b9f001"
VPC_CIDR = "192.168.0.0/16"
CSG = "sg-0e1f2a3b4c5d60001"            # eks-cluster-sg-demo-...
NODE_SG = "sg-0e1f2a3b4c5d6node"         # the broken setting's node-group group
CSG_NAME = "eks-cluster-sg-demo-1587460241"
NODE_SG_NAME = "demo-ng-general-nodes"

# Subnets: the Fargate ones are the two fp-default names (manifests/examples/fargate-profiles).
SUBNETS = [
    # id, cidr, zone, name
    ("subnet-0a1b2c3d4e5f60003", "192.168.32.0/19", "eu-west-1a", "demo-private-nodes-a"),
    ("subnet-0a1b2c3d4e5f60004", "192.168.64.0/19", "eu-west-1b", "demo-private-nodes-b"),
    ("subnet-0a1b2c3d4e5f60001", "192.168.96.0/19", "eu-west-1a", "demo-private-fargate-a"),
    ("subnet-0a1b2c3d4e5f60002", "192.168.128.0/19", "eu-west-1b", "demo-private-fargate-b"),
]
NODE_SUBNETS = [s[0] for s in SUBNETS[:2]]
ALL_SUBNETS = [s[0] for s in SUBNETS]
ZONE_ID = {"eu-west-1a": "euw1-az1", "eu-west-1b": "euw1-az2"}

def perm(proto, ports=None, groups=(), cidrs=()):
    p = {
        "IpProtocol": proto,
        "IpRanges": [{"CidrIp": c} for c in cidrs],
        "Ipv6Ranges": [],
        "PrefixListIds": [],
        "UserIdGroupPairs": [{"GroupId": g, "UserId": ACCOUNT} for g in groups],
    }
    if ports is not None:
        p["FromPort"], p["ToPort"] = ports
    return p


def describe_cluster():
    return {"cluster": {
        "name": "demo",
        "arn": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/demo",
        "createdAt": "2026-03-02T08:15:00.000000+00:00",
        "version": "1.32",
        "endpoint": "https://5E1D0CEF2A3B4C5D6E7F8A9B0C1D2E3F.gr7.eu-west-1.eks.amazonaws.com",
        "roleArn": f"arn:aws:iam::{ACCOUNT}:role/demo-cluster-role",
        "resourcesVpcConfig": {
            "subnetIds": ALL_SUBNETS,
            "securityGroupIds": [],
            "clusterSecurityGroupId": CSG,
            "vpcId": VPC,
            "endpointPublicAccess": True,
            "endpointPrivateAccess": True,
            "publicAccessCidrs": ["0.0.0.0/0"],
        },
        "kubernetesNetworkConfig": {
            "serviceIpv4Cidr": "10.100.0.0/16",
            "ipFamily": "ipv4",
            "elasticLoadBalancing": {"enabled": False},
        },
        "logging": {"clusterLogging": [{"types": ["api", "audit", "authenticator", "controllerManager", "scheduler"], "enabled": False}]},
        "identity": {"oidc": {"issuer": "https://oidc.eks.eu-west-1.amazonaws.com/id/5E1D0CEF2A3B4C5D6E7F8A9B0C1D2E3F"}},
        "status": "ACTIVE",
        "certificateAuthority": {"data": "LS0t..."},
        "platformVersion": "eks.8",
        "tags": {},
        "accessConfig": {"authenticationMode": "API_AND_CONFIG_MAP"},
    }}


def describe_nodegroup(launch_template=False):
    ng = {
        "nodegroupName": "ng-general",
        "nodegroupArn": f"arn:aws:eks:{REGION}:{ACCOUNT}:nodegroup/demo/ng-general/4ec8b2a1",
        "clusterName": "demo",
        "version": "1.32",
        "releaseVersion": "1.32.3-20260301",
        "createdAt": "2026-03-02T09:10:00.000000+00:00",
        "status": "ACTIVE",
        "capacityType": "ON_DEMAND",
        "scalingConfig": {"minSize": 2, "maxSize": 4, "desiredSize": 2},
        "instanceTypes": ["m5.large"],
        "subnets": NODE_SUBNETS,
        "amiType": "AL2023_x86_64_STANDARD",
        "nodeRole": f"arn:aws:iam::{ACCOUNT}:role/demo-node-role",
        "labels": {},
        "taints": [],
        "resources": {"autoScalingGroups": [{"name": "eks-ng-general-4ec8b2a1"}]},
        "diskSize": 20,
        "health": {"issues": []},
        "updateConfig": {"maxUnavailable": 1},
        "tags": {},
    }
    if launch_template:
        # A launch template that names security groups: EKS then adds no cluster security group.
        del ng["diskSize"]
        ng["launchTemplate"] = {"name": "ng-general-lt", "version": "2", "id": "lt-0e1f2a3b4c5d60001"}
    return {"nodegroup": ng}


def launch_template_versions():
    return {"LaunchTemplateVersions": [{
        "LaunchTemplateId": "lt-0e1f2a3b4c5d60001",
        "LaunchTemplateName": "ng-general-lt",
        "VersionNumber": 2,
        "VersionDescription": "own node security group",
        "CreateTime": "2026-03-02T09:05:00.000Z",
        "CreatedBy": f"arn:aws:iam::{ACCOUNT}:user/admin",
        "DefaultVersion": True,
        "LaunchTemplateData": {
            "SecurityGroupIds": [NODE_SG],
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
        },
    }]}


def describe_subnets():
    out = []
    for sid, cidr, zone, name in SUBNETS:
        out.append({
            "AvailabilityZone": zone,
            "AvailabilityZoneId": ZONE_ID[zone],
            "AvailableIpAddressCount": 8180,
            "CidrBlock": cidr,
            "DefaultForAz": False,
            "MapPublicIpOnLaunch": False,
            "State": "available",
            "SubnetId": sid,
            "VpcId": VPC,
            "OwnerId": ACCOUNT,
            "AssignIpv6AddressOnCreation": False,
            "Ipv6CidrBlockAssociationSet": [],
            "Tags": [{"Key": "Name", "Value": name}, {"Key": "kubernetes.io/role/internal-elb", "Value": "1"}],
            "SubnetArn": f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/{sid}",
        })
    return {"Subnets": out}


def describe_vpcs():
    return {"Vpcs": [{
        "CidrBlock": VPC_CIDR,
        "DhcpOptionsId": "dopt-0e1f2a3b4c5d60001",
        "State": "available",
        "VpcId": VPC,
        "OwnerId": ACCOUNT,
        "InstanceTenancy": "default",
        "CidrBlockAssociationSet": [{
            "AssociationId": "vpc-cidr-assoc-0e1f2a3b4c5d60001",
            "CidrBlock": VPC_CIDR,
            "CidrBlockState": {"State": "associated"},
        }],
        "IsDefault": False,
        "Tags": [{"Key": "Name", "Value": "demo-vpc"}],
    }]}


def group(gid, name, description, ingress, egress, tags):
    return {
        "Description": description,
        "GroupName": name,
        "IpPermissions": ingress,
        "OwnerId": ACCOUNT,
        "GroupId": gid,
        "IpPermissionsEgress": egress,
        "Tags": tags,
        "VpcId": VPC,
    }


ALL_OUT = [perm("-1", cidrs=["0.0.0.0/0"])]


def cluster_sg(extra_ingress=()):
    """The EKS default: all traffic from itself, all traffic out."""
    return group(
        CSG, CSG_NAME,
        "EKS created security group applied to ENI that is attached to EKS Control Plane master nodes, as well as any managed workloads.",
        [perm("-1", groups=[CSG])] + list(extra_ingress),
        ALL_OUT,
        [{"Key": "aws:eks:cluster-name", "Value": "demo"},
         {"Key": "kubernetes.io/cluster/demo", "Value": "owned"},
         {"Key": "Name", "Value": CSG_NAME}],
    )


def describe_security_groups(broken):
    if not broken:
        return {"SecurityGroups": [cluster_sg()]}
    # The node group's own group: everything from itself and from the cluster security group
    # (control plane -> kubelet, micro-VM pods -> node-group pods), everything out.
    node_sg = group(
        NODE_SG, NODE_SG_NAME, "ng-general nodes (launch template ng-general-lt)",
        [perm("-1", groups=[NODE_SG]), perm("-1", groups=[CSG])],
        ALL_OUT,
        [{"Key": "Name", "Value": NODE_SG_NAME}],
    )
    # What was opened on the cluster security group for those nodes: the API server (443) and
    # DNS over TCP only. UDP 53 was forgotten.
    csg = cluster_sg([perm("tcp", (443, 443), groups=[NODE_SG]), perm("tcp", (53, 53), groups=[NODE_SG])])
    return {"SecurityGroups": [csg, node_sg]}


def default_acl():
    entries = []
    for egress in (True, False):
        entries += [
            {"CidrBlock": "0.0.0.0/0", "Egress": egress, "Protocol": "-1", "RuleAction": "allow", "RuleNumber": 100},
            {"CidrBlock": "0.0.0.0/0", "Egress": egress, "Protocol": "-1", "RuleAction": "deny", "RuleNumber": 32767},
        ]
    return {"NetworkAcls": [{
        "Associations": [
            {"NetworkAclAssociationId": f"aclassoc-0e1f2a3b4c5d6000{i + 1}", "NetworkAclId": "acl-0e1f2a3b4c5d60001", "SubnetId": s}
            for i, s in enumerate(ALL_SUBNETS)
        ],
        "Entries": entries,
        "IsDefault": True,
        "NetworkAclId": "acl-0e1f2a3b4c5d60001",
        "Tags": [],
        "VpcId": VPC,
        "OwnerId": ACCOUNT,
    }]}


def subnet_of(ip):
    import ipaddress
    for sid, cidr, zone, _ in SUBNETS:
        if ipaddress.ip_address(ip) in ipaddress.ip_network(cidr):
            return sid, zone
    raise SystemExit(f"{ip} is in no subnet")


def eni(eni_id, description, primary, secondaries, groups, requester_managed, extra=None):
    sid, zone = subnet_of(primary)
    for ip in secondaries:
        assert subnet_of(ip)[0] == sid, (ip, sid)
    e = {
        "AvailabilityZone": zone,
        "Description": description,
        "Groups": groups,
        "InterfaceType": "interface",
        "Ipv6Addresses": [],
        "MacAddress": "0a:" + ":".join(f"{int(x):02x}" for x in primary.split(".")[1:]) + ":00:01",
        "NetworkInterfaceId": eni_id,
        "OwnerId": ACCOUNT,
        "PrivateDnsName": f"ip-{primary.replace('.', '-')}.{REGION}.compute.internal",
        "PrivateIpAddress": primary,
        "PrivateIpAddresses": [
            {"Primary": True, "PrivateDnsName": f"ip-{primary.replace('.', '-')}.{REGION}.compute.internal", "PrivateIpAddress": primary}
        ] + [
            {"Primary": False, "PrivateDnsName": f"ip-{ip.replace('.', '-')}.{REGION}.compute.internal", "PrivateIpAddress": ip}
            for ip in secondaries
        ],
        "RequesterManaged": requester_managed,
        "SourceDestCheck": True,
        "Status": "in-use",
        "SubnetId": sid,
        "TagSet": [],
        "VpcId": VPC,
    }
    e.update(extra or {})
    return e


def describe_network_interfaces(broken):
    csg = [{"GroupName": CSG_NAME, "GroupId": CSG}]
    node_groups = [{"GroupName": NODE_SG_NAME, "GroupId": NODE_SG}] if broken else csg
    out = []
    # The two EC2 nodes of ng-general: the VPC CNI hands out the pods' IPs as secondary
    # addresses of the node's ENI (demo-cluster.yaml's pods on each node).
    nodes = [
        ("eni-0e1f2a3b4c5d6a001", "i-0e1f2a3b4c5d6a001", "192.168.40.11",
         ["192.168.40.50", "192.168.40.70", "192.168.40.80", "192.168.40.82", "192.168.40.96"]),
        ("eni-0e1f2a3b4c5d6b001", "i-0e1f2a3b4c5d6b001", "192.168.70.12",
         ["192.168.70.60", "192.168.70.81", "192.168.70.90", "192.168.70.95"]),
    ]
    for eni_id, instance, ip, pods in nodes:
        out.append(eni(eni_id, f"aws-K8S-{instance}", ip, pods, node_groups, False, {
            "Attachment": {
                "AttachTime": "2026-03-02T09:12:00.000Z",
                "AttachmentId": "eni-attach-" + eni_id[4:],
                "DeleteOnTermination": True,
                "DeviceIndex": 0,
                "NetworkCardIndex": 0,
                "InstanceId": instance,
                "InstanceOwnerId": ACCOUNT,
                "Status": "attached",
            },
        }))
    # One ENI per micro-VM, requester-managed by Fargate, with the cluster security group.
    for n, ip in enumerate(["192.168.100.21", "192.168.130.22", "192.168.101.33"]):
        out.append(eni(
            f"eni-0e1f2a3b4c5d6f00{n + 1}",
            f"[EKS] fargate-ip-{ip.replace('.', '-')}.{REGION}.compute.internal",
            ip, [], csg, True,
            {"RequesterId": "AROAEXAMPLEFARGATE0001:fargate-demo"},
        ))
    # The control plane's ENIs in the VPC: the kubernetes service endpoints.
    for n, ip in enumerate(["192.168.40.200", "192.168.70.201"]):
        out.append(eni(f"eni-0e1f2a3b4c5d6c00{n + 1}", "Amazon EKS demo", ip, [], csg, False,
                       {"RequesterId": "AROAEXAMPLEEKSCP00001:eks-controlplane"}))
    return {"NetworkInterfaces": out}


def write(dirname, broken):
    d = os.path.join(HERE, dirname)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.endswith(".json"):
            os.remove(os.path.join(d, name))
    files = {
        "eks-describe-cluster.json": describe_cluster(),
        "eks-list-fargate-profiles.json": {"fargateProfileNames": ["fp-default"]},
        "eks-describe-nodegroup.json": describe_nodegroup(launch_template=broken),
        "ec2-describe-vpcs.json": describe_vpcs(),
        "ec2-describe-subnets.json": describe_subnets(),
        "ec2-describe-security-groups.json": describe_security_groups(broken),
        "ec2-describe-network-acls.json": default_acl(),
        "ec2-describe-network-interfaces.json": describe_network_interfaces(broken),
    }
    # The profile byte for byte as fargate-profiles/ has it (it is describe-fargate-profile output).
    shutil.copyfile(os.path.join(HERE, "fargate-profiles", "fp-default.json"),
                    os.path.join(d, "eks-describe-fargate-profile-fp-default.json"))
    if broken:
        files["ec2-describe-launch-template-versions.json"] = launch_template_versions()
    for name, content in files.items():
        with open(os.path.join(d, name), "w") as f:
            json.dump(content, f, indent=4)
            f.write("\n")


write("aws", broken=False)
write("aws-udp53-missing", broken=True)
