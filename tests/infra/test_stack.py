"""Every security property of the synthesized template (see checks.py)."""

from __future__ import annotations

import pytest

from tests.infra import checks
from tests.infra.conftest import ALTERNATE_CONTEXT, TEST_NONCE, Synthesized

pytestmark = pytest.mark.infra


def test_synth_has_no_dependency_cycle(default_synth: Synthesized) -> None:
    checks.check_no_dependency_cycle(default_synth.template)


def test_issuer_reaches_functions_without_a_cycle(default_synth: Synthesized) -> None:
    checks.check_issuer_wiring(
        default_synth.template, issuer=checks.default_issuer(default_synth.template)
    )


def test_signing_key_is_rsa_sign_verify_with_alias(default_synth: Synthesized) -> None:
    checks.check_signing_key(default_synth.template, key_spec="RSA_2048")


def test_key_policy_lets_only_the_exchange_sign(default_synth: Synthesized) -> None:
    checks.check_key_policy(default_synth.template, key_spec="RSA_2048")


def test_exchange_role_has_exactly_its_permissions(default_synth: Synthesized) -> None:
    checks.check_exchange_permissions(default_synth.template, key_spec="RSA_2048")


def test_exchange_cannot_write_s3_or_read_other_tables(default_synth: Synthesized) -> None:
    statements = checks.role_statements(default_synth.template, "Exchange/Role")
    granted = checks.grants(statements)
    table = checks.arn_of(default_synth.template, "PolicyTable/Table")
    assert not any(action.startswith("s3:") for action, _, _ in granted)
    for action, resource, _ in granted:
        if action.startswith("dynamodb:"):
            assert resource == checks.json.dumps(table, sort_keys=True)


def test_publisher_role_has_exactly_its_permissions(default_synth: Synthesized) -> None:
    checks.check_publisher_permissions(default_synth.template)


def test_documents_bucket_is_private_tls_only_versioned(default_synth: Synthesized) -> None:
    checks.check_documents_bucket(default_synth.template)


def test_log_bucket_is_private_and_tls_only(default_synth: Synthesized) -> None:
    checks.check_log_bucket(default_synth.template)


def test_distribution_uses_oac_and_https(default_synth: Synthesized) -> None:
    checks.check_distribution(default_synth.template)


def test_functions_runtime_arm64_tracing_logs(default_synth: Synthesized) -> None:
    checks.check_functions(default_synth.template)


def test_token_api_routes_throttling_access_logs(default_synth: Synthesized) -> None:
    checks.check_token_api(default_synth.template)


def test_policy_table_on_demand_pitr_retained(default_synth: Synthesized) -> None:
    checks.check_policy_table(default_synth.template)


def test_jwks_published_on_schedule_and_every_deploy(default_synth: Synthesized) -> None:
    checks.check_jwks_publication(default_synth.template, nonce=TEST_NONCE)


def test_outputs(default_synth: Synthesized) -> None:
    checks.check_outputs(
        default_synth.template, issuer=checks.default_issuer(default_synth.template)
    )


def test_exchange_environment(default_synth: Synthesized) -> None:
    env = checks.resource(default_synth.template, "Exchange/Function")["Properties"]
    variables = env["Environment"]["Variables"]
    assert variables["TOKEX_STS_PARTITIONS"] == "aws"
    assert variables["TOKEX_TTL_CAP_SECONDS"] == "3600"
    assert variables["TOKEX_DEFAULT_TTL_SECONDS"] == "900"
    assert variables["LOG_LEVEL"] == "INFO"
    assert "TOKEX_STS_REGIONS" not in variables  # empty = every region of the partition


# --- the alternate deployment: ECC key, custom domain, WAF, STS regions -----------------


def test_alternate_every_check_holds(alternate_synth: Synthesized) -> None:
    template = alternate_synth.template
    issuer = f"https://{ALTERNATE_CONTEXT['domainName']}"
    checks.check_no_dependency_cycle(template)
    checks.check_issuer_wiring(template, issuer=issuer)
    checks.check_signing_key(template, key_spec="ECC_NIST_P256")
    checks.check_key_policy(template, key_spec="ECC_NIST_P256")
    checks.check_exchange_permissions(template, key_spec="ECC_NIST_P256")
    checks.check_publisher_permissions(template)
    checks.check_documents_bucket(template)
    checks.check_distribution(template)
    checks.check_functions(template)
    checks.check_token_api(
        template,
        rate=ALTERNATE_CONTEXT["throttleRateLimit"],
        burst=ALTERNATE_CONTEXT["throttleBurstLimit"],
    )
    checks.check_outputs(template, issuer=issuer)


def test_alternate_custom_domain_certificate_and_waf(alternate_synth: Synthesized) -> None:
    template = alternate_synth.template
    checks.check_custom_domain(
        template,
        domain=ALTERNATE_CONTEXT["domainName"],
        certificate_arn=ALTERNATE_CONTEXT["certificateArn"],
    )
    config = checks.resource(template, "IssuerSite/Distribution")["Properties"]
    assert config["DistributionConfig"]["WebACLId"] == ALTERNATE_CONTEXT["webAclArn"]
    env = checks.resource(template, "Exchange/Function")["Properties"]["Environment"]
    assert env["Variables"]["TOKEX_STS_REGIONS"] == "eu-west-1,us-east-1"
