"""The web console over real HTTP against the real agent process (`python -m agent run`) on a
Modbus simulator and a real Mosquitto: off unless configured, the login and its refusals,
sessions, CSRF, live values, reads and writes through the command path and its audit log,
/metrics. (The browser tests are in test_web_browser.py; the rule editor in test_web_editor.py.)"""

from __future__ import annotations

import time

import psutil
import pytest
import requests

from agent.commands import AuditLog
from agent.web.sessions import LoginLimiter, Sessions
from tests.agent_proc import AgentProcess, agent_config
from tests.fakes import eventually
from tests.hardware_sim.modbus_sim import ModbusSim
from tests.web_helpers import ADMIN, VIEWER, Client, add_web

pytestmark = pytest.mark.timeout(90)


def _devices(port: int) -> list[dict]:
    return [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485", "poll": "300ms",
             "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}}]


@pytest.fixture
def gateway(tmp_path, broker):
    with ModbusSim("air_monitor_rs485", units=[1], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        config = agent_config(tmp_path, broker_port=broker.port, devices=_devices(sim.tcp_address[1]))
        base = add_web(config, login_per_minute=4, max_body="4KiB")
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            client = Client(base)
            client.wait_up()
            yield sim, agent, client, tmp_path
        finally:
            agent.stop()


def test_without_a_web_section_nothing_listens(tmp_path, broker):
    with ModbusSim("air_monitor_rs485", units=[1], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        config = agent_config(tmp_path, broker_port=broker.port, devices=_devices(sim.tcp_address[1]))
        with AgentProcess(config, tmp_path / "agent.log").start() as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
            listening = [c for c in psutil.Process(agent.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN]
            assert listening == []


def test_only_the_login_page_and_static_files_without_a_session(gateway):
    _, _, client, _ = gateway
    assert client.get("/login").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    home = client.get("/")
    assert home.status_code == 302 and home.headers["Location"] == "/login"
    for path in ("/api/overview", "/api/devices", "/api/events", "/api/cameras", "/metrics",
                 "/api/events/x/files/0.jpg"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "login_required"
    assert client.post("/api/devices/aq-01/write", {"point": "fan_on", "value": False}, csrf=False).status_code == 401


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(gateway):
    _, agent, client, tmp_path = gateway
    wrong = client.login((ADMIN[0], "not it"))
    unknown = client.login(("nobody", "not it"))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": {"code": "bad_login", "message": "wrong name or password"}}
    assert "edge_session" not in client.http.cookies
    assert client.login().status_code == 200
    me = client.get("/api/me").json()
    assert me["user"] == ADMIN[0] and me["role"] == "admin" and len(me["csrf"]) > 20
    audit = (tmp_path / "state" / "audit.log").read_text()
    assert '"event":"web.login_failed"' in audit and '"event":"web.login","by":"web:tech"' in audit
    assert ADMIN[1] not in audit and "not it" not in audit


def test_login_attempts_are_rate_limited_whether_or_not_the_account_exists(gateway):
    _, _, client, _ = gateway
    answers = [client.login(("nobody", "guess")).status_code for _ in range(6)]
    assert answers == [401] * 4 + [429] * 2   # login_per_minute: 4
    # the right password does not get through the limit either: nothing tells the guesser
    limited = client.login(ADMIN)
    assert limited.status_code == 429 and "wait a minute" in limited.json()["error"]["message"]


def test_changes_need_the_sessions_csrf_token_and_the_same_origin(gateway):
    sim, _, client, _ = gateway
    assert client.login().status_code == 200
    body = {"point": "fan_on", "value": False}
    for token in (False, "forged-" + "x" * 30):
        refused = client.post("/api/devices/aq-01/write", body, csrf=token)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    other_site = client.post("/api/devices/aq-01/write", body, headers={"Origin": "http://evil.example"})
    assert other_site.status_code == 403
    assert sim.values(1)["fan_on"] is True   # nothing changed


def test_live_values_read_and_write_through_the_command_path(gateway):
    sim, _, client, tmp_path = gateway
    assert client.login().status_code == 200

    def pm25() -> float | None:
        devices = {d["id"]: d for d in client.get("/api/devices").json()["devices"]}
        latest = {p["name"]: p["latest"] for p in devices["aq-01"]["points"]}["pm25"]
        return latest["v"] if latest else None
    sim.set_value(1, "pm25", 42.5)
    eventually(lambda: pm25() == 42.5, 10, "the console to show the new value")
    sim.set_value(1, "pm25", 77.0)
    eventually(lambda: pm25() == 77.0, 10, "the console to show the next value")

    read = client.post("/api/devices/aq-01/read", {"point": "pm25"})
    assert read.status_code == 200 and read.json()["result"]["v"] == 77.0

    wrote = client.post("/api/devices/aq-01/write", {"point": "fan_on", "value": False})
    assert wrote.status_code == 200, wrote.text
    assert sim.values(1)["fan_on"] is False

    refused = client.post("/api/devices/aq-01/write", {"point": "pm25", "value": 1.0})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "not_writable"
    assert sim.values(1)["pm25"] == 77.0
    unknown = client.post("/api/devices/nope/write", {"point": "fan_on", "value": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_device"

    audit = tmp_path / "state" / "audit.log"
    lines = audit.read_text()
    assert '"command":"device.write"' in lines and '"by":"web:tech"' in lines and '"code":"not_writable"' in lines
    assert AuditLog.verify(audit) == []   # one chain: the console's entries beside the centre's


def test_a_viewer_may_look_but_not_write(gateway):
    sim, _, client, _ = gateway
    assert client.login(VIEWER).status_code == 200
    assert client.get("/api/devices").status_code == 200
    refused = client.post("/api/devices/aq-01/write", {"point": "fan_on", "value": False})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert sim.values(1)["fan_on"] is True


def test_a_request_too_large_or_not_json_is_refused_unread(gateway):
    sim, _, client, _ = gateway
    assert client.login().status_code == 200
    big = client.post("/api/devices/aq-01/write", {"point": "fan_on", "value": "x" * 10_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    junk = client.http.post(client.base + "/api/devices/aq-01/write", data=b"\xff{not json",
                            headers={"X-CSRF-Token": client.csrf})
    assert junk.status_code == 400 and junk.json()["error"]["code"] == "malformed"
    assert sim.values(1)["fan_on"] is True


def test_logout_and_a_forged_cookie_end_access(gateway):
    _, _, client, _ = gateway
    assert client.login().status_code == 200
    assert client.get("/api/overview").status_code == 200
    assert client.post("/api/logout", {}).status_code == 200
    assert client.get("/api/overview").status_code == 401
    client.http.cookies.set("edge_session", "made-up-token")
    assert client.get("/api/overview").status_code == 401


def test_overview_and_metrics(gateway):
    _, _, client, _ = gateway
    assert client.login().status_code == 200
    eventually(lambda: client.get("/api/overview").json()["uplink"]["state"] == "connected", 10, "connected")
    overview = client.get("/api/overview").json()
    assert {"depth", "oldest_age_s", "evictions"} <= set(overview["buffer"]) and "boundaries" in overview
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    for name in ("edge_agent_buffer_depth ", "edge_agent_uplink_connected 1.0", 'edge_agent_devices_online{device="aq-01"}',
                 "process_resident_memory_bytes"):
        assert name in text, name


def test_an_expired_session_is_refused(tmp_path, broker):
    config = agent_config(tmp_path, broker_port=broker.port, devices=[])
    base = add_web(config, session_idle="1s")
    with AgentProcess(config, tmp_path / "agent.log").start():
        client = Client(base)
        client.wait_up()
        assert client.login().status_code == 200 and client.get("/api/me").status_code == 200
        time.sleep(1.5)   # the time passing is what this test is about
        expired = client.get("/api/me")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        assert client.post("/api/logout", {}).status_code == 401


def test_over_tls_with_public_metrics(tmp_path, broker):
    """``tls``: the console speaks HTTPS only, its cookie is Secure; ``metrics_public``: /metrics
    without a login, and still nothing else."""
    from tests.hardware_sim.certs import make_test_certs
    certs = make_test_certs(tmp_path / "certs")
    config = agent_config(tmp_path, broker_port=broker.port, devices=[])
    base = add_web(config, metrics_public=True,
                   tls={"cert_file": str(certs["server.crt"]), "key_file": str(certs["server.key"])})
    base = base.replace("http://", "https://")
    with AgentProcess(config, tmp_path / "agent.log").start():
        client = Client(base)
        client.http.verify = str(certs["ca.crt"])
        client.wait_up()
        login = client.login()
        assert login.status_code == 200
        cookie = login.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        anonymous = Client(base)
        anonymous.http.verify = str(certs["ca.crt"])
        assert anonymous.get("/metrics").status_code == 200
        assert "edge_agent_buffer_depth" in anonymous.get("/metrics").text
        assert anonymous.get("/api/overview").status_code == 401
        plain = Client(base.replace("https://", "http://"))
        with pytest.raises(requests.ConnectionError):
            plain.get("/login")


def test_sessions_expire_when_idle_and_after_their_longest():
    now = [0.0]
    sessions = Sessions(idle=60, longest=300, clock=lambda: now[0])
    token, session = sessions.open("tech", "admin")
    now[0] = 59
    assert sessions.get(token) is session
    now[0] = 59 + 61
    assert sessions.get(token) is None                      # idle too long
    token, _ = sessions.open("tech", "admin")
    for t in range(170, 420, 50):                           # used every 50 s
        now[0] = t
        assert sessions.get(token) is not None
    now[0] = 120 + 301
    assert sessions.get(token) is None                      # and still ended after `longest`
    assert sessions.get("x" * 500) is None


def test_the_login_limit_counts_names_that_do_not_exist_too():
    now = [0.0]
    limiter = LoginLimiter(per_minute=3, clock=lambda: now[0])
    assert [limiter.allow(f"10.0.0.{i}", "ghost") for i in range(4)] == [True, True, True, False]
    now[0] = 60
    assert limiter.allow("10.0.0.9", "ghost") is True
