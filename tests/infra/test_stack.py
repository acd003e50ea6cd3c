"""Every security property of the synthesized template (see checks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from cdk.functions import function_compiler
from tests.infra import checks
from tests.infra.conftest import (
    ACCOUNTS_CONTEXT,
    ALTERNATE_CONTEXT,
    EKS_ISSUER,
    OIF_ISSUER,
    TEST_NONCE,
    Synthesized,
)
from tokex.local.functions import functions_dir, handler_path

AB = ("a", "b")
# TOKEX_TRUSTED_ISSUERS of the alternate and rotation synths: compact JSON, each issuer's
# keys in the order kind, issuer, account(, region, cluster).
ALTERNATE_TRUSTED_ISSUERS = json.dumps([OIF_ISSUER, EKS_ISSUER], separators=(",", ":"))
ROTATION_TRUSTED_ISSUERS = json.dumps([EKS_ISSUER], separators=(",", ":"))

pytestmark = pytest.mark.infra


def test_synth_has_no_dependency_cycle(default_synth: Synthesized) -> None:
    checks.check_no_dependency_cycle(default_synth.template)


def test_issuer_reaches_functions_without_a_cycle(default_synth: Synthesized) -> None:
    checks.check_issuer_wiring(
        default_synth.template, issuer=checks.default_issuer(default_synth.template)
    )


def test_introspection_wiring(default_synth: Synthesized) -> None:
    checks.check_introspection_wiring(
        default_synth.template, issuer=checks.default_issuer(default_synth.template)
    )


def test_the_distribution_to_invalidate_is_an_output(default_synth: Synthesized) -> None:
    """docs/deploy.md "Emergency rotation (suspected compromise)" invalidates the
    published documents of the distribution this output names: the stack's one."""
    resources = checks.raw(default_synth.template)["Resources"]
    distributions = [
        logical_id
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::CloudFront::Distribution"
    ]
    assert len(distributions) == 1
    default_synth.template.has_output("DistributionId", {"Value": {"Ref": distributions[0]}})


FUNCTIONS = ("exchange", "introspect", "jwks_publisher")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_runs_its_own_handler(default_synth: Synthesized, name: str) -> None:
    """The asset is the function's part of the installed tokex_functions - the files
    `tokex local` and the tests' cold starts load - and the handler setting names it;
    with the runtime's CPython here, each module's bytecode for it too (`/var/task` is
    read-only: without it every cold start compiles them)."""
    path = "".join(part.capitalize() for part in name.split("_"))
    props = checks.resource(default_synth.template, f"{path}/Function")["Properties"]
    asset = default_synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
    module, _, function = props["Handler"].rpartition(".")
    assert function == "lambda_handler"
    assert (asset / f"{module.replace('.', '/')}.py").read_bytes() == handler_path(
        name
    ).read_bytes()
    sources = sorted(
        p.relative_to(asset).as_posix()
        for p in asset.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    package = functions_dir()
    expected = sorted(
        f"tokex_functions/{p.relative_to(package).as_posix()}"
        for p in [*package.glob("*.py"), *(package / name).rglob("*.py")]
        if "__pycache__" not in p.parts
    )
    assert sources == expected
    compiler = function_compiler()
    bytecode = sorted(p for p in asset.rglob("*") if "__pycache__" in p.parts and p.is_file())
    if compiler is None:
        assert not bytecode, "bytecode without the runtime's interpreter"
    else:
        assert len(checks.check_runtime_bytecode(asset, compiler)) == len(bytecode)
    # The shared plumbing is there, byte for byte; no other function's handler is.
    assert (asset / "tokex_functions" / "http_endpoint.py").read_bytes() == (
        package / "http_endpoint.py"
    ).read_bytes()
    assert not [o for o in FUNCTIONS if o != name and (asset / "tokex_functions" / o).exists()]


def test_a_functions_cold_start_uses_its_shipped_bytecode(
    default_synth: Synthesized, tmp_path: Path
) -> None:
    """The package the runtime imports first (it pauses the collector: standard library
    only) loads from the asset's bytecode, read-only, compiling nothing."""
    compiler = function_compiler()
    if compiler is None:
        pytest.skip("no CPython of the runtime's version here: the functions ship sources")
    props = checks.resource(default_synth.template, "Exchange/Function")["Properties"]
    asset = default_synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
    loaded = checks.cold_import(compiler, asset, ["tokex_functions"], ["tokex_functions"], tmp_path)
    assert loaded == ["tokex_functions", "tokex_functions.collector"]


def test_signing_key_is_rsa_sign_verify_with_alias(default_synth: Synthesized) -> None:
    checks.check_signing_key(default_synth.template, key_spec="RSA_2048")


def test_key_policy_lets_only_the_exchange_sign(default_synth: Synthesized) -> None:
    checks.check_key_policy(default_synth.template, key_spec="RSA_2048")


def test_key_grants_are_ordered_for_a_zero_downtime_switch(default_synth: Synthesized) -> None:
    checks.check_key_switch_ordering(default_synth.template)


def test_exchange_role_has_exactly_its_permissions(default_synth: Synthesized) -> None:
    checks.check_exchange_permissions(default_synth.template, key_spec="RSA_2048")


def test_exchange_cannot_write_s3_or_read_other_tables(default_synth: Synthesized) -> None:
    statements = checks.role_statements(default_synth.template, "Exchange/Role")
    granted = checks.grants(statements)
    table = checks.arn_of(default_synth.template, "PolicyTable/Table")
    state = checks.arn_of(default_synth.template, "StateTable/Table")
    assert not any(action.startswith("s3:") for action, _, _ in granted)
    for action, resource, condition in granted:
        if action in ("dynamodb:PutItem", "dynamodb:UpdateItem"):
            # The state table only, and only its `sig#` / `rate#` items: never a client
            # or a revocation.
            assert resource == checks.json.dumps(state, sort_keys=True)
            assert (
                checks.json.loads(condition)
                == {
                    "dynamodb:PutItem": checks.SINGLE_USE_CONDITION,
                    "dynamodb:UpdateItem": checks.RATE_COUNTER_CONDITION,
                }[action]
            )
        elif action.startswith("dynamodb:"):
            assert resource == checks.json.dumps(table, sort_keys=True)


def test_introspect_role_has_exactly_its_permissions(default_synth: Synthesized) -> None:
    checks.check_introspect_permissions(default_synth.template)
    granted = checks.grants(checks.role_statements(default_synth.template, "Introspect/Role"))
    assert not any(action == "kms:Sign" for action, _, _ in granted)


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


def test_state_table_ttl_on_demand_pitr_retained(default_synth: Synthesized) -> None:
    checks.check_state_table(default_synth.template)


def test_no_instance_tag_lookups_by_default(default_synth: Synthesized) -> None:
    checks.check_instance_tag_lookups(default_synth.template, role_name=None)


def test_no_trusted_issuers_by_default(default_synth: Synthesized) -> None:
    """Without `trustedIssuers` the exchange takes SigV4 evidence only: no variable at all
    (an empty one would still be a change to every existing deployment's template)."""
    checks.check_trusted_issuers(default_synth.template, expected=None)


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


def test_ttl_cap_is_one_config_value(alternate_synth: Synthesized) -> None:
    """The introspect function refuses tokens living longer than its cap: a cap below the
    exchange's would turn valid tokens inactive. Both come from `ttlCapSeconds`."""
    template = alternate_synth.template
    caps = {
        fn: checks.resource(template, f"{fn}/Function")["Properties"]["Environment"]["Variables"][
            "TOKEX_TTL_CAP_SECONDS"
        ]
        for fn in ("Exchange", "Introspect")
    }
    assert caps == {"Exchange": "7200", "Introspect": "7200"}
    template.has_output("TtlCapSeconds", {"Value": "7200"})


# --- the alternate deployment: ECC key, custom domain, WAF, STS regions -----------------


def test_alternate_every_check_holds(alternate_synth: Synthesized) -> None:
    """Also rotation step 1: slot "b" published, "a" signs."""
    template = alternate_synth.template
    issuer = f"https://{ALTERNATE_CONTEXT['domainName']}"
    published = (ALTERNATE_CONTEXT["publishedKeyArns"],)
    role_name = ALTERNATE_CONTEXT["instanceTagsRoleName"]
    checks.check_no_dependency_cycle(template)
    checks.check_issuer_wiring(template, issuer=issuer)
    checks.check_introspection_wiring(
        template,
        issuer=issuer,
        ttl_cap=7200,
        default_ttl=600,
        published_keys=published,
        slots=AB,
    )
    checks.check_signing_key(template, key_spec="ECC_NIST_P256", slots=AB)
    checks.check_key_policy(template, key_spec="ECC_NIST_P256", slots=AB)
    checks.check_key_switch_ordering(template, slots=AB)
    checks.check_exchange_permissions(
        template,
        key_spec="ECC_NIST_P256",
        instance_tags_roles=(checks.instance_tags_role_arn("*", role_name),),
    )
    checks.check_introspect_permissions(template, published_keys=published, slots=AB)
    checks.check_publisher_permissions(template, published_keys=published, slots=AB)
    checks.check_jwks_publication(template, nonce=TEST_NONCE, slots=AB, published_keys=published)
    checks.check_documents_bucket(template)
    checks.check_distribution(template)
    checks.check_functions(template, tracing="sdk")
    checks.check_token_api(
        template,
        rate=ALTERNATE_CONTEXT["throttleRateLimit"],
        burst=ALTERNATE_CONTEXT["throttleBurstLimit"],
    )
    checks.check_state_table(template)
    checks.check_instance_tag_lookups(template, role_name=role_name)
    checks.check_trusted_issuers(template, expected=ALTERNATE_TRUSTED_ISSUERS)
    checks.check_outputs(
        template,
        issuer=issuer,
        default_ttl=600,
        ttl_cap=7200,
        slots=AB,
        published_keys=published,
    )


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


# --- instance tag lookups limited to listed accounts -----------------------------------


def test_instance_tags_roles_in_listed_accounts_only(accounts_synth: Synthesized) -> None:
    template = accounts_synth.template
    role_name = ACCOUNTS_CONTEXT["instanceTagsRoleName"]
    roles = tuple(
        checks.instance_tags_role_arn(account, role_name)
        for account in ACCOUNTS_CONTEXT["instanceTagsAccounts"].split(",")
    )
    checks.check_exchange_permissions(
        template, key_spec="RSA_2048", instance_tags_roles=roles, active="b"
    )
    checks.check_instance_tag_lookups(template, role_name=role_name)
    checks.check_introspect_permissions(template, slots=("b",))
    checks.check_functions(
        template, tracing="off", retention_days=365, require_signed_audience=True
    )
    # Every log group keeps what logRetentionDays says: the functions', the API's access
    # log, the custom resource provider's.
    retention = {
        name: group["Properties"].get("RetentionInDays")
        for name, group in template.find_resources("AWS::Logs::LogGroup").items()
    }
    assert len(retention) >= 5 and set(retention.values()) == {365}, retention


# --- key rotation: every state of a rotation (docs/deploy.md, Key rotation) ------------


def _every_key_check(template: Template, *, slots: tuple[str, ...], active: str) -> None:
    issuer = checks.default_issuer(template)
    checks.check_no_dependency_cycle(template)
    checks.check_issuer_wiring(template, issuer=issuer, active=active)
    checks.check_introspection_wiring(template, issuer=issuer, slots=slots, active=active)
    checks.check_signing_key(template, key_spec="RSA_2048", slots=slots)
    checks.check_key_policy(template, key_spec="RSA_2048", slots=slots, active=active)
    checks.check_key_switch_ordering(template, slots=slots, active=active)
    checks.check_introspect_permissions(template, slots=slots)
    checks.check_publisher_permissions(template, slots=slots)
    checks.check_jwks_publication(template, nonce=TEST_NONCE, slots=slots, active=active)
    checks.check_outputs(template, issuer=issuer, slots=slots, active=active)


def test_rotation_step_2_every_key_check_holds(rotation_synth: Synthesized) -> None:
    """Slot "b" signs; slot "a" is still published (its tokens keep verifying) but its
    key policy no longer lets anyone sign."""
    _every_key_check(rotation_synth.template, slots=AB, active="b")
    checks.check_exchange_permissions(rotation_synth.template, key_spec="RSA_2048", active="b")
    checks.check_functions(rotation_synth.template)


def test_trusted_issuers_reach_the_exchange_exactly(
    alternate_synth: Synthesized, rotation_synth: Synthesized
) -> None:
    """From cdk.json's list (alternate) and from `-c`'s JSON string (rotation) alike: the
    configured issuers, in order, as compact JSON; the exchange's grants are those of a
    deployment without them (test_alternate_every_check_holds, and the rotation's exact
    check_exchange_permissions above)."""
    exchange = "Exchange/Function"
    alternate = checks.resource(alternate_synth.template, exchange)["Properties"]
    rotation = checks.resource(rotation_synth.template, exchange)["Properties"]
    alternate_value = alternate["Environment"]["Variables"]["TOKEX_TRUSTED_ISSUERS"]
    rotation_value = rotation["Environment"]["Variables"]["TOKEX_TRUSTED_ISSUERS"]
    assert alternate_value == ALTERNATE_TRUSTED_ISSUERS
    assert json.loads(alternate_value) == [OIF_ISSUER, EKS_ISSUER]
    assert rotation_value == ROTATION_TRUSTED_ISSUERS
    checks.check_trusted_issuers(rotation_synth.template, expected=ROTATION_TRUSTED_ISSUERS)


def test_rotation_step_3_every_key_check_holds(accounts_synth: Synthesized) -> None:
    """Slot "a" retired: only "b" exists, nothing else is published."""
    _every_key_check(accounts_synth.template, slots=("b",), active="b")
    assert "PublishedKeyArns" not in accounts_synth.raw["Outputs"]


def test_exchange_signs_with_the_active_key_only(rotation_synth: Synthesized) -> None:
    template = rotation_synth.template
    granted = checks.grants(checks.role_statements(template, "Exchange/Role"))
    kms = {(action, resource) for action, resource, _ in granted if action.startswith("kms:")}
    active = checks.json.dumps(checks.key_arn(template, "b"), sort_keys=True)
    assert kms == {("kms:Sign", active), ("kms:GetPublicKey", active)}
    env = checks.resource(template, "Exchange/Function")["Properties"]["Environment"]
    assert env["Variables"]["TOKEX_SIGNING_KEY_ID"] == checks.key_arn(template, "b")


def test_slot_a_key_keeps_its_logical_id_in_every_configuration(
    default_synth: Synthesized,
    rotation_synth: Synthesized,
) -> None:
    """Current stacks' key (and alias) must never be replaced or renamed."""
    ids = {
        (
            checks.logical_id(synth.template, "SigningKey/Key"),
            checks.logical_id(synth.template, "SigningKey/Alias"),
        )
        for synth in (default_synth, rotation_synth)
    }
    assert ids == {(checks.SLOT_A_KEY_LOGICAL_ID, checks.SLOT_A_ALIAS_LOGICAL_ID)}
    default_key = checks.resource(default_synth.template, "SigningKey/Key")
    rotation_key = checks.resource(rotation_synth.template, "SigningKey/Key")
    # The same key: the rotation changes its policy (no Sign) and ordering only.
    assert default_key["Properties"]["KeySpec"] == rotation_key["Properties"]["KeySpec"]
    assert default_key["Properties"]["Description"] == rotation_key["Properties"]["Description"]


def test_another_key_spec_is_another_key_under_the_same_alias(
    rotation_synth: Synthesized, alternate_synth: Synthesized
) -> None:
    """CloudFormation cannot change a KMS key's `KeySpec`: such an update fails. So a change
    of `signingKeySpec` (rotation: RSA_2048, alternate: ECC_NIST_P256, both slots "a" and
    "b") gives every slot's key a new logical id: CloudFormation creates the new key, and
    the old one leaves the template (retained). Each alias keeps its logical id, and so is
    updated in place to the new key: a new alias of the same name could not be created."""
    rsa, ecc = rotation_synth.template, alternate_synth.template
    for slot in AB:
        rsa_key = checks.logical_id(rsa, f"{checks.slot_path(slot)}/Key")
        ecc_key = checks.logical_id(ecc, f"{checks.slot_path(slot)}/KeyEccNistP256")
        assert ecc_key != rsa_key
        assert rsa_key not in alternate_synth.raw["Resources"]
        assert ecc_key not in rotation_synth.raw["Resources"]
        alias = f"{checks.slot_path(slot)}/Alias"
        assert checks.logical_id(ecc, alias) == checks.logical_id(rsa, alias)
        assert checks.resource(ecc, alias)["Properties"]["TargetKeyId"] == {
            "Fn::GetAtt": [ecc_key, "Arn"]
        }
    assert checks.logical_id(ecc, "SigningKey/Alias") == checks.SLOT_A_ALIAS_LOGICAL_ID


def test_another_key_spec_has_its_own_grants(
    default_synth: Synthesized, rotation_synth: Synthesized, alternate_synth: Synthesized
) -> None:
    """A change of `signingKeySpec` makes new grant policies beside the new keys. With one
    logical id for both specs, CloudFormation updated the policy in place to the new key
    before the exchange function (which depends on it): warm environments still signing
    with the old key lost `kms:Sign` on it and answered 503 until they were replaced. As
    resources of their own, the old grants go in the cleanup phase, after every update."""
    ecc = alternate_synth
    names = ("ExchangeGrants", "IntrospectGrants", "PublisherGrants")
    compared = set()
    for slot in AB:
        for name in names:
            # RSA_2048 stacks (the default, and rotation step 2 with slot "b" active).
            rsa = next(
                (s for s in (default_synth, rotation_synth) if _has_grants(s, slot, name)), None
            )
            if rsa is None or not _has_grants(ecc, slot, name):
                continue  # ExchangeGrants: the active slot only
            # A default (RSA_2048) stack keeps the policies' ids it has always had.
            rsa_path = checks.grants_path(rsa.template, slot, name)
            assert rsa_path == f"{checks.slot_path(slot)}/{name}"
            rsa_id = checks.logical_id(rsa.template, rsa_path)
            ecc_id = checks.logical_id(ecc.template, checks.grants_path(ecc.template, slot, name))
            assert rsa_id != ecc_id, f"{name} of slot {slot}"
            assert rsa_id not in ecc.raw["Resources"]
            assert ecc_id not in rsa.raw["Resources"]
            compared.add(name)
    assert compared == set(names)


def _has_grants(synth: Synthesized, slot: str, name: str) -> bool:
    from cdk.signing_key import grants_construct_id

    paths = {r.get("Metadata", {}).get("aws:cdk:path") for r in synth.raw["Resources"].values()}
    return any(
        f"{checks.STACK}/{checks.slot_path(slot)}/{grants_construct_id(name, spec)}/Resource"
        in paths
        for spec in checks.SIGNING_ALGORITHMS
    )


def test_published_key_arns_output_lists_the_other_slot(rotation_synth: Synthesized) -> None:
    template = rotation_synth.template
    template.has_output("SigningKeyArn", {"Value": checks.key_arn(template, "b")})
    template.has_output("PublishedKeyArns", {"Value": checks.key_arn(template, "a")})


@pytest.mark.parametrize("synth", ["default_synth", "alternate_synth"])
def test_cloudfront_is_the_only_door(request: pytest.FixtureRequest, synth: str) -> None:
    checks.check_one_door(request.getfixturevalue(synth).template)


# --- every function's environment, as the function reads it at cold start -------------


@pytest.mark.parametrize(
    "synth",
    ["default_synth", "alternate_synth", "accounts_synth", "rotation_synth", "short_tokens_synth"],
)
def test_every_function_cold_starts_with_its_settings(
    request: pytest.FixtureRequest, synth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting a function refuses at cold start fails every request after a deploy that
    went well: the introspect function, given the TTL cap without the default TTL, failed
    every cold start with a cap under 900 s (an API Gateway 500 on every /introspect)."""
    started = checks.cold_start_every_function(request.getfixturevalue(synth).raw, monkeypatch)
    assert sorted(started) == ["exchange", "introspect", "jwks_publisher"]
    for kind, settings in started.items():
        assert settings.ttl_cap_seconds >= settings.default_ttl_seconds, kind
    expected = 6000 if synth == "short_tokens_synth" else 60
    assert started["exchange"].rate_limit_per_minute == expected
