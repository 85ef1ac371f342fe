"""A broker address names one node or several, each amqps:// one with its TLS files; the config's
broker.tls block reaches every component through amqp_url."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.connection import pika_parameters
from domain.broker_address import BrokerAddressError, parse_broker_address, redact, split_broker_urls, with_tls_files
from domain.config import ConfigError, broker_address_from_env, load_config, parse_config


def test_comma_separated_full_urls_are_several_nodes_in_order():
    urls = split_broker_urls("amqp://u:p@mq1:5672/prod, amqp://u:p@mq2:5673/prod")
    assert urls == ["amqp://u:p@mq1:5672/prod", "amqp://u:p@mq2:5673/prod"]


def test_the_documented_host_list_form_is_one_url_per_host_with_the_same_credentials_and_vhost():
    nodes = parse_broker_address("amqps://svc:pw@mq1,mq2:5700,mq3/prod?heartbeat=30")
    assert [(n.host, n.port, n.tls) for n in nodes] == [("mq1", 5671, True), ("mq2", 5700, True), ("mq3", 5671, True)]
    assert all(n.url.endswith("/prod?heartbeat=30") and "svc:pw@" in n.url for n in nodes)


def test_tls_files_travel_in_the_query_and_are_removed_from_the_url_given_to_the_libraries():
    [node] = parse_broker_address("amqps://u:p@mq1/prod?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&heartbeat=5")
    assert (node.ca_file, node.cert_file, node.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert node.url == "amqps://u:p@mq1/prod?heartbeat=5"


@pytest.mark.parametrize("address, complaint", [
    ("", "empty"),
    ("http://mq1/", "unsupported scheme"),
    ("amqp://u:p@mq1,,mq2/", "empty host"),
    ("amqp://u:p@mq1/?cacertfile=/ca.pem", "plain amqp://"),
    ("amqps://u:p@mq1/?certfile=/c.pem", "both certfile and keyfile"),
    ("amqp://u:p@mq1:99999/", "bad port"),
])
def test_unreadable_addresses_are_refused_without_showing_the_password(address, complaint):
    with pytest.raises(BrokerAddressError, match=complaint) as info:
        parse_broker_address(address)
    assert ":p@" not in str(info.value)


def test_tls_files_are_refused_for_a_plain_amqp_node():
    with pytest.raises(BrokerAddressError, match="not amqps://"):
        with_tls_files("amqps://u:p@mq1/,amqp://u:p@mq2/", ca_file="/ca.pem", cert_file=None, key_file=None)


def test_redact_hides_passwords_and_query_of_every_node():
    shown = redact("amqps://u:secret@mq1/prod?keyfile=/k.pem,amqps://u:secret@mq2/prod")
    assert shown == "amqps://u:***@mq1/prod,amqps://u:***@mq2/prod"


def _raw(**extra: object) -> dict[str, object]:
    return {"projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                                  "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}}}, **extra}


def test_config_broker_tls_is_written_into_every_amqps_url_relative_to_the_config_file(tmp_path: Path):
    config = parse_config(
        _raw(amqp_url="amqps://u:p@mq1,mq2/prod",
             broker={"tls": {"ca_file": "tls/ca.pem", "cert_file": "/etc/c.pem", "key_file": "/etc/k.pem"}}),
        tmp_path / "hotupdate.yaml",
    )
    nodes = parse_broker_address(config.amqp_url)
    assert [n.host for n in nodes] == ["mq1", "mq2"]
    assert {(n.ca_file, n.cert_file, n.key_file) for n in nodes} == {(str(tmp_path / "tls/ca.pem"), "/etc/c.pem",
                                                                      "/etc/k.pem")}


def test_config_with_broker_tls_but_a_plain_amqp_url_is_an_error_naming_the_key(tmp_path: Path):
    with pytest.raises(ConfigError, match="not amqps://"):
        parse_config(_raw(amqp_url="amqp://u:p@mq1/", broker={"tls": {"ca_file": "/ca.pem"}}), tmp_path / "h.yaml")
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        parse_config(_raw(amqp_url="amqps://u:p@mq1/", broker={"tls": {"cert_file": "/c.pem"}}), tmp_path / "h.yaml")
    with pytest.raises(ConfigError, match="amqp_url"):
        parse_config(_raw(amqp_url="amqp://u:p@mq1,/"), tmp_path / "h.yaml")


def test_the_machines_client_certificate_comes_from_the_environment(tmp_path: Path, monkeypatch):
    file = tmp_path / "hotupdate.yaml"
    file.write_text("amqp_url: amqps://u:p@mq1/prod\nbroker: {tls: {ca_file: /etc/ca.pem}}\n"
                    "projects: {ssss: {areas: {hot_server: {大陆: [cn]}},"
                    " inventory: {cn: {servers: {game: {127.0.0.1: [qq_1]}}}}}}\n")
    monkeypatch.setenv("HOTUPDATE_AMQP_URL", "amqps://u:p@mq1,mq2/prod")
    monkeypatch.setenv("HOTUPDATE_BROKER_CERT_FILE", "/etc/ops1.pem")
    monkeypatch.setenv("HOTUPDATE_BROKER_KEY_FILE", "/etc/ops1.key")
    nodes = parse_broker_address(load_config(file).amqp_url)
    files = ("/etc/ca.pem", "/etc/ops1.pem", "/etc/ops1.key")
    assert [(n.host, n.ca_file, n.cert_file, n.key_file) for n in nodes] == [("mq1", *files), ("mq2", *files)]
    # commands run without a configuration file (--amqp-url) take the same environment
    monkeypatch.setenv("HOTUPDATE_BROKER_CA_FILE", "/etc/ca.pem")
    [node] = parse_broker_address(broker_address_from_env("amqps://u:p@mq3/prod"))
    assert (node.ca_file, node.cert_file) == ("/etc/ca.pem", "/etc/ops1.pem")


def test_pika_gets_one_verifying_tls_parameter_set_per_node_in_order(tmp_path: Path):
    params = pika_parameters("amqps://u:p@mq1,mq2:5700/prod,amqp://u:p@mq3/prod")
    assert [(p.host, p.port, p.virtual_host) for p in params] == [("mq1", 5671, "prod"), ("mq2", 5700, "prod"),
                                                                  ("mq3", 5672, "prod")]
    assert params[0].ssl_options is not None and params[0].ssl_options.server_hostname == "mq1"
    assert params[0].ssl_options.context.check_hostname and params[1].ssl_options.server_hostname == "mq2"
    assert params[2].ssl_options is None


def test_config_check_reports_plain_remote_nodes_and_a_client_key_others_can_read(tmp_path: Path):
    from domain.config_check import broker_tls_findings

    plain = parse_config(_raw(amqp_url="amqp://u:p@127.0.0.1/,amqp://u:p@mq2/"), tmp_path / "h.yaml")
    assert [(f.level, f.where) for f in broker_tls_findings(plain)] == [("warning", "amqp_url")]
    assert "mq2" in broker_tls_findings(plain)[0].message and ":p@" not in broker_tls_findings(plain)[0].message

    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    (tmp_path / "client.key").chmod(0o644)
    tls = {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": "client.key"}
    config = parse_config(_raw(amqp_url="amqps://u:p@mq1/", broker={"tls": tls}), tmp_path / "h.yaml")
    levels = {f.where: f.level for f in broker_tls_findings(config)}
    assert levels == {"broker.tls.ca_file": "ok", "broker.tls.cert_file": "ok", "broker.tls.key_file": "error"}
    (tmp_path / "client.key").chmod(0o600)
    (tmp_path / "ca.pem").unlink()
    levels = {f.where: f.level for f in broker_tls_findings(config)}
    assert levels == {"broker.tls.ca_file": "error", "broker.tls.cert_file": "ok", "broker.tls.key_file": "ok"}
