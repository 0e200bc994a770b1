#!/usr/bin/env python3
"""Seeds an AWS API emulator (moto in server mode) through the AWS APIs (boto3) with the
setting an AWS CLI JSON directory describes (manifests/examples/aws, .../aws-udp53-missing),
and prints {"old id": "new id", ...} on stdout: moto makes its own IDs, so the test maps them
back before comparing verdicts.

  moto_seed.py --endpoint URL --region REGION DIR [--extra-fargate-profiles N]
  moto_seed.py --endpoint URL --region REGION --scale ENIS,SGS,SUBNETS   (benchmark VPC)

Where moto cannot do what EKS does, this says so and works around it:
  * EKS derives resourcesVpcConfig.vpcId from the subnets and creates the cluster security
    group itself; moto stores resourcesVpcConfig verbatim, so both are passed in the
    CreateCluster body (sent as a signed raw request: botocore would drop the two fields,
    which are not part of the request shape).
  * moto invents a remoteAccessSecurityGroup for every node group (real EKS only with SSH
    remote access), an ID that exists nowhere; the prober reports it like any other group.
  * ENIs cannot be made requester-managed and delegated prefixes are not accepted; the demo
    uses neither (micro-VM ENIs are recognised by their description).
Each region is its own moto backend, so a test seeds its own region."""
import argparse, glob, json, os, sys

import urllib.request

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCOUNT_KEYS = dict(aws_access_key_id="testing", aws_secret_access_key="testing")


def load_dir(path):
    docs = {}
    for f in sorted(glob.glob(os.path.join(path, "*.json"))):
        with open(f) as fh:
            d = json.load(fh)
        for k, v in d.items():
            if isinstance(v, list):
                docs.setdefault(k, []).extend(v)
            else:
                docs.setdefault(k, []).append(v)
    return docs


class Seeder:
    def __init__(self, endpoint, region):
        self.region = region
        kw = dict(endpoint_url=endpoint, region_name=region, **ACCOUNT_KEYS)
        self.ec2 = boto3.client("ec2", **kw)
        self.eks = boto3.client("eks", **kw)
        self.endpoint = endpoint.rstrip("/")
        self.ids = {}

    def create_cluster(self, **body):
        """EKS CreateCluster as a signed raw request, keeping fields boto3 would drop."""
        req = AWSRequest(method="POST", url=self.endpoint + "/clusters", data=json.dumps(body),
                         headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(**{"access_key": "testing", "secret_key": "testing"}), "eks",
                  self.region).add_auth(req)
        raw = urllib.request.Request(req.url, data=req.body, headers=dict(req.headers.items()),
                                     method="POST")
        with urllib.request.urlopen(raw) as r:
            r.read()

    def m(self, old):
        return self.ids.get(old, old)

    def az(self, zone):
        # eu-west-1a -> <region>a: a test's own region keeps the zone letter.
        return self.region + zone[-1] if zone else None

    def perms(self, perms):
        out = []
        for p in perms:
            q = {"IpProtocol": p["IpProtocol"]}
            for k in ("FromPort", "ToPort"):
                if k in p:
                    q[k] = p[k]
            if p.get("IpRanges"):
                q["IpRanges"] = [{"CidrIp": r["CidrIp"]} for r in p["IpRanges"]]
            if p.get("Ipv6Ranges"):
                q["Ipv6Ranges"] = [{"CidrIpv6": r["CidrIpv6"]} for r in p["Ipv6Ranges"]]
            if p.get("PrefixListIds"):
                q["PrefixListIds"] = [{"PrefixListId": r["PrefixListId"]} for r in p["PrefixListIds"]]
            if p.get("UserIdGroupPairs"):
                q["UserIdGroupPairs"] = [{"GroupId": self.m(g["GroupId"])} for g in p["UserIdGroupPairs"]]
            out.append(q)
        return out

    def seed(self, docs, extra_profiles=0):
        for v in docs.get("Vpcs", []):
            self.ids[v["VpcId"]] = self.ec2.create_vpc(CidrBlock=v["CidrBlock"])["Vpc"]["VpcId"]
        vpc = next(iter(self.ids.values()))
        for s in docs.get("Subnets", []):
            new = self.ec2.create_subnet(VpcId=self.m(s["VpcId"]), CidrBlock=s["CidrBlock"],
                                         AvailabilityZone=self.az(s.get("AvailabilityZone")))
            self.ids[s["SubnetId"]] = new["Subnet"]["SubnetId"]
        groups = docs.get("SecurityGroups", [])
        for g in groups:
            if g["GroupName"] == "default":
                found = self.ec2.describe_security_groups(Filters=[
                    {"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}])
                self.ids[g["GroupId"]] = found["SecurityGroups"][0]["GroupId"]
                continue
            new = self.ec2.create_security_group(GroupName=g["GroupName"],
                                                 Description=g.get("Description") or g["GroupName"],
                                                 VpcId=self.m(g["VpcId"]))
            self.ids[g["GroupId"]] = new["GroupId"]
        for g in groups:
            gid = self.m(g["GroupId"])
            # A new group allows all egress; replace that with exactly the described rules.
            have = self.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
            if have.get("IpPermissionsEgress"):
                self.ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=self.perms(have["IpPermissionsEgress"]))
            if have.get("IpPermissions"):
                self.ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=self.perms(have["IpPermissions"]))
            if g.get("IpPermissions"):
                self.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=self.perms(g["IpPermissions"]))
            if g.get("IpPermissionsEgress"):
                self.ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=self.perms(g["IpPermissionsEgress"]))
        for a in docs.get("NetworkAcls", []):
            if a.get("IsDefault"):
                found = self.ec2.describe_network_acls(Filters=[
                    {"Name": "vpc-id", "Values": [vpc]}, {"Name": "default", "Values": ["true"]}])
                acl = found["NetworkAcls"][0]
            else:
                acl = self.ec2.create_network_acl(VpcId=self.m(a["VpcId"]))["NetworkAcl"]
                for assoc in a.get("Associations", []):
                    cur = self.ec2.describe_network_acls(Filters=[
                        {"Name": "association.subnet-id", "Values": [self.m(assoc["SubnetId"])]}])
                    for other in cur["NetworkAcls"]:
                        for x in other.get("Associations", []):
                            if x["SubnetId"] == self.m(assoc["SubnetId"]):
                                self.ec2.replace_network_acl_association(
                                    AssociationId=x["NetworkAclAssociationId"], NetworkAclId=acl["NetworkAclId"])
            self.ids[a["NetworkAclId"]] = acl["NetworkAclId"]
            for e in acl.get("Entries", []):
                if e["RuleNumber"] != 32767:
                    self.ec2.delete_network_acl_entry(NetworkAclId=acl["NetworkAclId"],
                                                      RuleNumber=e["RuleNumber"], Egress=e["Egress"])
            for e in a.get("Entries", []):
                if e["RuleNumber"] == 32767:
                    continue
                kw = dict(NetworkAclId=acl["NetworkAclId"], RuleNumber=e["RuleNumber"],
                          Protocol=e["Protocol"], RuleAction=e["RuleAction"], Egress=e["Egress"])
                if "CidrBlock" in e:
                    kw["CidrBlock"] = e["CidrBlock"]
                if "Ipv6CidrBlock" in e:
                    kw["Ipv6CidrBlock"] = e["Ipv6CidrBlock"]
                if "PortRange" in e:
                    kw["PortRange"] = e["PortRange"]
                self.ec2.create_network_acl_entry(**kw)
        for v in docs.get("LaunchTemplateVersions", []):
            data = v.get("LaunchTemplateData", {})
            new = self.ec2.create_launch_template(
                LaunchTemplateName=v["LaunchTemplateName"],
                LaunchTemplateData={"SecurityGroupIds": [self.m(g) for g in data.get("SecurityGroupIds", [])]})
            self.ids[v["LaunchTemplateId"]] = new["LaunchTemplate"]["LaunchTemplateId"]
        for n in docs.get("NetworkInterfaces", []):
            ips = [{"PrivateIpAddress": a["PrivateIpAddress"], "Primary": bool(a.get("Primary"))}
                   for a in n.get("PrivateIpAddresses", [])]
            new = self.ec2.create_network_interface(
                SubnetId=self.m(n["SubnetId"]), Description=n.get("Description", ""),
                Groups=[self.m(g["GroupId"]) for g in n.get("Groups", [])],
                PrivateIpAddresses=ips or [{"PrivateIpAddress": n["PrivateIpAddress"], "Primary": True}])
            self.ids[n["NetworkInterfaceId"]] = new["NetworkInterface"]["NetworkInterfaceId"]
        for c in docs.get("cluster", []):
            vpc_cfg = c["resourcesVpcConfig"]
            self.create_cluster(
                name=c["name"], roleArn=c.get("roleArn", "arn:aws:iam::123456789012:role/x"),
                resourcesVpcConfig={
                    "subnetIds": [self.m(s) for s in vpc_cfg.get("subnetIds", [])],
                    "securityGroupIds": [self.m(s) for s in vpc_cfg.get("securityGroupIds", [])],
                    # Real EKS fills these two in itself (see the module doc).
                    "vpcId": self.m(vpc_cfg["vpcId"]),
                    "clusterSecurityGroupId": self.m(vpc_cfg["clusterSecurityGroupId"]),
                    "endpointPublicAccess": vpc_cfg.get("endpointPublicAccess", True),
                    "endpointPrivateAccess": vpc_cfg.get("endpointPrivateAccess", False),
                },
                kubernetesNetworkConfig={"serviceIpv4Cidr": c["kubernetesNetworkConfig"]["serviceIpv4Cidr"]},
            )
            cluster = c["name"]
            for p in docs.get("fargateProfile", []):
                self.eks.create_fargate_profile(
                    fargateProfileName=p["fargateProfileName"], clusterName=cluster,
                    podExecutionRoleArn=p["podExecutionRoleArn"],
                    subnets=[self.m(s) for s in p.get("subnets", [])],
                    selectors=[{k: v for k, v in s.items() if k in ("namespace", "labels")} for s in p["selectors"]])
            for i in range(extra_profiles):
                self.eks.create_fargate_profile(
                    fargateProfileName=f"fp-extra-{i:03}", clusterName=cluster,
                    podExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    subnets=[self.m(s) for s in vpc_cfg.get("subnetIds", [])[:1]],
                    selectors=[{"namespace": f"extra-{i:03}"}])
            for n in docs.get("nodegroup", []):
                kw = dict(clusterName=cluster, nodegroupName=n["nodegroupName"],
                          nodeRole=n.get("nodeRole", "arn:aws:iam::123456789012:role/n"),
                          subnets=[self.m(s) for s in n.get("subnets", [])])
                lt = n.get("launchTemplate")
                if lt:
                    kw["launchTemplate"] = {"id": self.m(lt["id"]), "version": "1"}
                self.eks.create_nodegroup(**kw)

    def scale(self, enis, sgs, subnets):
        """A large VPC for the benchmark: SUBNETS /22 subnets of 192.168.0.0/16 (so the
        embedded demo cluster's pod IPs fall in them and are judged), SGS groups that each
        admit the next (rules referencing groups), ENIS ENIs spread over the subnets with 3
        groups each. The cluster's subnets are those of the demo pods."""
        assert subnets <= 64
        vpc = self.ec2.create_vpc(CidrBlock="192.168.0.0/16")["Vpc"]["VpcId"]
        subnet_ids = [self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"192.168.{4 * i}.0/22",
                                             AvailabilityZone=self.region + "ab"[i % 2])["Subnet"]["SubnetId"]
                      for i in range(subnets)]
        group_ids = [self.ec2.create_security_group(GroupName=f"g{i:04}", Description="bench", VpcId=vpc)["GroupId"]
                     for i in range(sgs)]
        for i, g in enumerate(group_ids):
            self.ec2.authorize_security_group_ingress(GroupId=g, IpPermissions=[
                {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
                 "UserIdGroupPairs": [{"GroupId": group_ids[(i + 1) % len(group_ids)]}]},
                {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "IpRanges": [{"CidrIp": "192.168.0.0/16"}]}])
        for i in range(enis):
            s = i % subnets
            self.ec2.create_network_interface(
                SubnetId=subnet_ids[s], Description=f"aws-K8S-i-{i:017x}",
                Groups=[group_ids[(i + k) % sgs] for k in range(3)],
                PrivateIpAddress=f"192.168.{4 * s + 3}.{10 + i // subnets}")
        # The demo's node pods are in 192.168.40.0/22 and 68.0/22, its micro-VM pods in
        # 100.0/22 and 128.0/22.
        nodes, fargate = [subnet_ids[10], subnet_ids[17]], [subnet_ids[25], subnet_ids[32]]
        self.create_cluster(
            name="bench", roleArn="arn:aws:iam::123456789012:role/x",
            resourcesVpcConfig={"subnetIds": nodes + fargate, "securityGroupIds": [],
                                "vpcId": vpc, "clusterSecurityGroupId": group_ids[0]},
            kubernetesNetworkConfig={"serviceIpv4Cidr": "10.100.0.0/16"})
        self.eks.create_fargate_profile(fargateProfileName="fp-default", clusterName="bench",
                                        podExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                                        subnets=fargate,
                                        selectors=[{"namespace": "default"}, {"namespace": "kube-system"}])
        self.eks.create_nodegroup(clusterName="bench", nodegroupName="ng-general",
                                  nodeRole="arn:aws:iam::123456789012:role/n", subnets=nodes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--extra-fargate-profiles", type=int, default=0)
    ap.add_argument("--scale", help="ENIS,SGS,SUBNETS")
    ap.add_argument("dir", nargs="?")
    a = ap.parse_args()
    s = Seeder(a.endpoint, a.region)
    if a.scale:
        s.scale(*[int(x) for x in a.scale.split(",")])
    else:
        s.seed(load_dir(a.dir), a.extra_fargate_profiles)
    json.dump(s.ids, sys.stdout)
    print()


if __name__ == "__main__":
    main()
