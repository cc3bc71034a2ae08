"""Settings: each variable's bad values give one clear line naming it; secrets never leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_tasks.settings import SettingsError, load_settings

SENTINELS = {"PLATFORM_TASKS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380"}
SECRET = "s3cr3t-Pa55word"


def error_for(**overrides: str) -> str:
    env = {**SENTINELS, **{f"PLATFORM_TASKS_{k.upper()}": v for k, v in overrides.items()}}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_sentinel_topology_is_parsed_into_addresses() -> None:
    settings = load_settings({**SENTINELS, "PLATFORM_TASKS_SENTINEL_MASTER": "main"})
    assert [(a.host, a.port) for a in settings.sentinels] == [
        ("127.0.0.1", 26379),
        ("127.0.0.1", 26380),
    ]
    assert settings.sentinel_master == "main"
    assert settings.uses_sentinel


def test_a_single_node_url_is_accepted() -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:6390"})
    assert not settings.uses_sentinel


def test_the_redis_location_names_no_credential() -> None:
    sentinels = load_settings({**SENTINELS, "PLATFORM_TASKS_SENTINEL_MASTER": "main",
                               "PLATFORM_TASKS_REDIS_PASSWORD": SECRET,
                               "PLATFORM_TASKS_SENTINEL_PASSWORD": SECRET})
    assert sentinels.redis_location(0) == (
        "master 'main' of the Sentinels at 127.0.0.1:26379, 127.0.0.1:26380, db 0"
    )
    single = load_settings({"PLATFORM_TASKS_REDIS_URL": f"rediss://app:{SECRET}@redis.internal",
                            "PLATFORM_TASKS_BROKER_DB": "3"})
    assert single.redis_location(single.broker_db) == "rediss://redis.internal:6379/3"
    upgraded = load_settings({"PLATFORM_TASKS_REDIS_URL": f"redis://:{SECRET}@[::1]:6390",
                              "PLATFORM_TASKS_REDIS_TLS": "true"})
    assert upgraded.redis_location(1) == "rediss://[::1]:6390/1"


def test_defaults_match_the_seed() -> None:
    settings = load_settings(SENTINELS)
    assert settings.timezone == "America/New_York"
    assert (settings.broker_db, settings.result_db) == (0, 1)


def test_neither_topology_is_refused() -> None:
    expected = r"PLATFORM_TASKS_SENTINELS .* PLATFORM_TASKS_REDIS_URL"
    with pytest.raises(SettingsError, match=expected):
        load_settings({})


def test_both_topologies_are_refused() -> None:
    message = error_for(redis_url="redis://127.0.0.1:6390")
    assert "either PLATFORM_TASKS_REDIS_URL or PLATFORM_TASKS_SENTINELS" in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("sentinels", "localhost", "PLATFORM_TASKS_SENTINELS: expected host:port"),
        ("sentinels", "h:0", "PLATFORM_TASKS_SENTINELS: expected host:port"),
        ("sentinels", "h:70000", "PLATFORM_TASKS_SENTINELS: expected host:port"),
        ("sentinel_master", "", "PLATFORM_TASKS_SENTINEL_MASTER"),
        ("broker_db", "16", "PLATFORM_TASKS_BROKER_DB: Input should be less than or equal to 15"),
        ("broker_db", "one", "PLATFORM_TASKS_BROKER_DB: Input should be a valid integer"),
        ("result_db", "-1", "PLATFORM_TASKS_RESULT_DB: Input should be greater than or equal"),
        ("redis_tls", "maybe", "PLATFORM_TASKS_REDIS_TLS: Input should be a valid boolean"),
        ("redis_tls_ca_file", "/nonexistent/ca.pem", "PLATFORM_TASKS_REDIS_TLS_CA_FILE"),
        ("redis_socket_timeout", "0", "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT"),
        ("smtp_host", "", "PLATFORM_TASKS_SMTP_HOST"),
        ("smtp_port", "99999", "PLATFORM_TASKS_SMTP_PORT: Input should be less than 65536"),
        ("smtp_port", "smtp", "PLATFORM_TASKS_SMTP_PORT: Input should be a valid integer"),
        ("smtp_sender", "not-an-address", "PLATFORM_TASKS_SMTP_SENDER"),
        ("smtp_starttls", "sometimes", "PLATFORM_TASKS_SMTP_STARTTLS"),
        ("smtp_timeout", "-3", "PLATFORM_TASKS_SMTP_TIMEOUT"),
        ("payment_gateway_url", "gateway", "PLATFORM_TASKS_PAYMENT_GATEWAY_URL"),
        ("payment_gateway_timeout", "x", "PLATFORM_TASKS_PAYMENT_GATEWAY_TIMEOUT"),
        ("max_image_pixels", "0", "PLATFORM_TASKS_MAX_IMAGE_PIXELS"),
        ("report_recipient", "ops", "PLATFORM_TASKS_REPORT_RECIPIENT"),
        ("timezone", "Mars/Olympus", "PLATFORM_TASKS_TIMEZONE: expected an IANA time zone"),
        ("max_payload_bytes", "0", "PLATFORM_TASKS_MAX_PAYLOAD_BYTES"),
        ("result_expires_seconds", "soon", "PLATFORM_TASKS_RESULT_EXPIRES_SECONDS"),
        ("beat_lock_timeout", "1", "PLATFORM_TASKS_BEAT_LOCK_TIMEOUT"),
        ("log_level", "LOUD", "PLATFORM_TASKS_LOG_LEVEL"),
    ],
)
def test_each_bad_value_names_its_variable(variable: str, value: str, expected: str) -> None:
    message = error_for(**{variable: value})
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:6379", "expected redis://host:port"),
        ("redis://", "expected redis://host:port"),
        ("redis://h:port", "expected a numeric port"),
        ("redis://h:6379/zero", "path to be a database number, got /zero"),
        ("redis://h:6379/2", "names database 2 but PLATFORM_TASKS_BROKER_DB is 0"),
    ],
)
def test_bad_redis_urls_are_refused(url: str, expected: str) -> None:
    with pytest.raises(SettingsError, match="PLATFORM_TASKS_REDIS_URL") as caught:
        load_settings({"PLATFORM_TASKS_REDIS_URL": url})
    assert expected in str(caught.value)


@pytest.mark.parametrize("url", ["redis://h:6379", "redis://h:6379/", "redis://h:6379/3"])
def test_a_url_naming_the_broker_database_or_none_is_accepted(url: str) -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": url, "PLATFORM_TASKS_BROKER_DB": "3"})
    assert settings.broker_db == 3


def test_several_bad_values_are_all_reported() -> None:
    message = error_for(broker_db="99", smtp_port="x")
    assert "PLATFORM_TASKS_BROKER_DB" in message
    assert "PLATFORM_TASKS_SMTP_PORT" in message


def test_secrets_never_appear_in_errors() -> None:
    message = error_for(
        redis_password=SECRET,
        sentinel_password=SECRET,
        smtp_password=SECRET,
        sentinels=f"sentinel://:{SECRET}@h:bad",
        broker_db=SECRET,
        redis_url=f"redis://:{SECRET}@h:6379",
    )
    assert SECRET not in message


def test_secrets_never_appear_in_reprs(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "PLATFORM_TASKS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379",
            "PLATFORM_TASKS_REDIS_PASSWORD": SECRET,
            "PLATFORM_TASKS_SENTINEL_PASSWORD": SECRET,
            "PLATFORM_TASKS_SMTP_PASSWORD": SECRET,
        }
    )
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == SECRET


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLATFORM_TASKS_BROKER_DB", "7")
    assert load_settings(SENTINELS).broker_db == 0
