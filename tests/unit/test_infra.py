"""The AWS templates under infra/: cfn-lint finds no errors, and the security promises hold.

The promises checked here are the ones a review would look for first: the Ollama API (which has no
authentication) is reachable from the CIDR parameter only and never from 0.0.0.0/0, the artifact
bucket is private, versioned, encrypted and TLS-only, and no role gets a wildcard it does not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint
from cfnlint.decode import decode_str

INFRA = Path(__file__).resolve().parents[2] / "infra"
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]
WORLD = {"0.0.0.0/0", "::/0"}
# The only actions IAM cannot scope to a resource; each must also be justified in the template.
UNSCOPABLE_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def _templates() -> list[Path]:
    found = []
    for path in sorted(INFRA.rglob("*")):
        if path.suffix in {".yaml", ".yml", ".json", ".template"} and path.is_file():
            text = path.read_text(encoding="utf-8")
            if "AWSTemplateFormatVersion" in text or ("Resources:" in text and "Type: AWS::" in text):
                found.append(path)
    return found


TEMPLATES = _templates()
MAIN = INFRA / "cloudformation" / "distillery.yaml"


def _load(path: Path) -> dict[str, Any]:
    template, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems, problems
    return template


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _rules(value: Any) -> list[dict[str, Any]]:
    """Ingress rules, with both branches of any Fn::If."""
    if isinstance(value, list):
        return [rule for item in value for rule in _rules(item)]
    if isinstance(value, dict) and "Fn::If" in value:
        return [rule for branch in value["Fn::If"][1:] for rule in _rules(branch)]
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] == "AWS::NoValue":
        return []
    return [value]


def _ingress(template: dict[str, Any]) -> list[dict[str, Any]]:
    rules = []
    for group in _resources(template, "AWS::EC2::SecurityGroup").values():
        rules += _rules(group["Properties"].get("SecurityGroupIngress", []))
    rules += [r["Properties"] for r in _resources(template, "AWS::EC2::SecurityGroupIngress").values()]
    return rules


def _covers(rule: dict[str, Any], port: int) -> bool:
    if str(rule.get("IpProtocol")) in {"-1", "all"}:
        return True
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1))


def test_templates_are_found():
    assert MAIN in TEMPLATES


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_cfn_lint_finds_no_errors(path):
    matches = lint(path.read_text(encoding="utf-8"), regions=REGIONS)

    errors = [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(errors)


def test_cfn_lint_does_catch_a_broken_template():
    broken = """
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Group:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: broken
      SecurityGroupIngress:
        - IpProtocol: tcp
          FromPort: not-a-port
          ToPort: 11434
          CidrIp: !Ref NoSuchParameter
"""
    assert any(m.rule.id.startswith("E") for m in lint(broken, regions=REGIONS))


def test_ollama_port_is_open_to_the_cidr_parameter_only():
    template = _load(MAIN)

    rules = _ingress(template)
    ollama_rules = [rule for rule in rules if _covers(rule, 11434)]
    assert ollama_rules, "no ingress rule for the Ollama API"
    assert all(rule.get("CidrIp") == {"Ref": "OllamaAllowedCidr"} for rule in ollama_rules)
    assert not any(str(rule.get("CidrIp")) in WORLD or str(rule.get("CidrIpv6")) in WORLD for rule in rules)
    parameter = template["Parameters"]["OllamaAllowedCidr"]
    assert "Default" not in parameter  # whoever deploys must choose the network
    assertions = str(template["Rules"])
    assert "OllamaAllowedCidr" in assertions and "0.0.0.0/0" in assertions


def test_ssh_is_optional():
    template = _load(MAIN)

    ssh = [rule for rule in _ingress(template) if _covers(rule, 22)]
    assert all(rule.get("CidrIp") == {"Ref": "SshAllowedCidr"} for rule in ssh)
    assert template["Parameters"]["SshAllowedCidr"]["Default"] == ""
    group = next(iter(_resources(template, "AWS::EC2::SecurityGroup").values()))
    conditional = [item for item in group["Properties"]["SecurityGroupIngress"] if "Fn::If" in item]
    assert conditional and conditional[0]["Fn::If"][0] == "HasSsh"


def test_artifact_bucket_is_private_versioned_encrypted_and_tls_only():
    template = _load(MAIN)

    (bucket_name, bucket), = _resources(template, "AWS::S3::Bucket").items()
    properties = bucket["Properties"]
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert properties["VersioningConfiguration"]["Status"] == "Enabled"
    assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert bucket["DeletionPolicy"] == "Retain"
    policies = [
        p["Properties"]
        for p in _resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_name}
    ]
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    assert any(
        s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for s in statements
    )


def _statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, role in _resources(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_roles_are_least_privilege():
    template = _load(MAIN)

    roles = _resources(template, "AWS::IAM::Role")
    assert {"SageMakerExecutionRole", "OllamaInstanceRole"} <= set(roles)
    for role_name, statement in _statements(template):
        actions = _as_list(statement["Action"])
        resources = _as_list(statement["Resource"])
        assert statement["Effect"] == "Allow"
        assert not any(a == "*" or a.endswith(":*") for a in actions), (role_name, actions)
        if "*" in resources:
            assert set(actions) <= UNSCOPABLE_ACTIONS, (role_name, actions)
        if any(a.startswith("s3:") for a in actions):
            # Every S3 grant names the artifact bucket, never another bucket or all of them.
            assert all("ArtifactBucket" in str(r) for r in resources), (role_name, resources)
    sagemaker = roles["SageMakerExecutionRole"]["Properties"]
    assert sagemaker["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    ollama_actions = {a for name, s in _statements(template) if name == "OllamaInstanceRole" for a in _as_list(s["Action"])}
    assert ollama_actions == {"s3:ListBucket", "s3:GetObject"}  # the host only reads
