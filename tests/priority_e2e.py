"""What the signal-priority end-to-end tests (NTCIP and GB/T 20999) share: an agent that takes the
centre's signed commands serving one controller, and the centre's signed signal.priority."""

from __future__ import annotations

from tests.agent_proc import AgentProcess, agent_config


def start_agent(tmp_path, broker, device: dict, key: bytes, *, gateway: str, site: str, **commands) -> AgentProcess:
    """The agent on ``device`` with ``key`` as its command key (signal.priority allowed), connected."""
    key_file = tmp_path / "command.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    config = agent_config(tmp_path, broker_port=broker.port, gateway=gateway, site=site, devices=[device],
                          commands={"key": {"file": str(key_file)}, "allow": ["signal.priority"], **commands})
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
    return agent


def request_priority(centre, device: str, key: bytes, phase: int, duration_s: float) -> dict:
    """Send a signed signal.priority as the centre; its cmd_result's body."""
    sent = centre.send_command("signal.priority", {"device": device, "phase": phase, "duration_s": duration_s},
                               key=key)
    centre.wait_for(lambda c: c.last("cmd_result", sent["id"]), 5)
    return centre.last("cmd_result", sent["id"]).body
