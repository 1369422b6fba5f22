"""The web console in a real browser (Debian's headless Chromium through chromium-driver and
Selenium) against the real agent process on the simulators: a technician logs in, watches a
device's value change, draws a zone on the simulated camera's picture, applies it, and sees the
next staged intrusion reported in that zone (the event names the new rule).

Explicit waits on what the page shows, never sleeps for correctness."""

from __future__ import annotations

import pytest
import yaml

from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.camera_sim import CameraSim, junction_camera
from tests.hardware_sim.modbus_sim import ModbusSim
from tests.hardware_sim.signal_controller import FAST_PLAN, SignalControllerSim
from tests.web_browser import available, chrome, login, wait
from tests.web_helpers import ADMIN, VIEWER, Client, add_web

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def browser():
    missing = available()
    assert missing is None, missing
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def site(tmp_path, broker):
    """An air monitor and the junction camera, whose config has no rules yet (the test draws one)."""
    with ModbusSim("air_monitor_rs485", units=[1], tcp=("127.0.0.1", 0)).run_in_thread() as sim, \
            SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0)).run_in_thread() as controller, \
            CameraSim(plan=FAST_PLAN, plan_epoch=controller.controller.t0, seed=5, flow=1.0,
                      rates={"red_light": 0, "illegal_parking": 0, "wrong_way": 0, "zone_intrusion": 6.0}) as camera:
        devices = [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485", "poll": "300ms",
                    "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim.tcp_address[1],
                                   "timeout": "300ms"}}]
        config = agent_config(tmp_path, broker_port=broker.port, devices=devices)
        entry = junction_camera(camera.junction, url=camera.url)
        entry.pop("signal")
        entry["rules"] = []
        settings = yaml.safe_load(config.read_text())
        settings["cameras"] = [entry]
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        base = add_web(config)
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            Client(base).wait_up()
            yield sim, camera, agent, base, config
        finally:
            agent.stop()


def _text(browser, css: str) -> str:
    from selenium.webdriver.common.by import By
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def test_watch_a_value_draw_a_zone_apply_it_and_see_the_intrusion_in_it(browser, site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sim, camera, agent, base, config = site
    login(browser, base, *ADMIN)

    # a device's value changes on the devices page without a reload
    browser.get(base + "/#devices")
    sim.set_value(1, "pm25", 12.5)
    wait(browser).until(lambda b: _text(b, "#v-aq-01-pm25") == "12.50")
    sim.set_value(1, "pm25", 48.25)
    wait(browser).until(lambda b: _text(b, "#v-aq-01-pm25") == "48.25")
    # a write from the page reaches the device; its outcome stays through the page's redraws
    browser.find_element(By.ID, "w-aq-01-fan_on").send_keys("false")
    browser.find_element(By.CSS_SELECTOR, "#w-aq-01-fan_on + button").click()
    wait(browser).until(lambda b: _text(b, "#r-aq-01") == "fan_on written: false")
    assert sim.values(1)["fan_on"] is False
    wait(browser).until(lambda b: _text(b, "#v-aq-01-fan_on") == "false")   # polled again since
    assert _text(browser, "#r-aq-01") == "fan_on written: false"

    # bad figures through the same API the page uses: each refused with a message, nothing changed
    before = config.read_text()
    http = Client(base)
    assert http.login().status_code == 200
    picture = http.get("/api/cameras/cam-01/picture")
    assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"
    assert (picture.headers["X-Frame-Width"], picture.headers["X-Frame-Height"]) == ("1280", "720")
    outside = http.post("/api/cameras/cam-01/rules/preview",
                        {"ops": [{"op": "add", "kind": "zone_intrusion", "points": [[10, 10], [1500, 10], [10, 300]]}]})
    assert outside.status_code == 422 and "outside the 1280x720 frame" in outside.json()["error"]["message"]
    bow_tie = {"ops": [{"op": "add", "kind": "zone_intrusion",
                        "points": [[100, 100], [400, 400], [400, 100], [100, 400]]}]}
    crossing = http.post("/api/cameras/cam-01/rules/apply", bow_tie)
    assert crossing.status_code == 422 and "edges cross" in crossing.json()["error"]["message"]
    viewer = Client(base)
    assert viewer.login(VIEWER).status_code == 200
    assert viewer.post("/api/cameras/cam-01/rules/apply", bow_tie).status_code == 403
    assert http.post("/api/cameras/cam-01/rules/apply", {"ops": []}).json()["error"]["code"] == "unchanged"
    assert config.read_text() == before

    # the camera's picture, then a zone drawn around the carriageway
    browser.get(base + "/#camera/cam-01")
    wait(browser, 60).until(lambda b: b.find_element(By.ID, "picture").get_attribute("src"))
    wait(browser).until(lambda b: "1280 × 720" in _text(b, "#frame-info"))
    Select(browser.find_element(By.ID, "kind")).select_by_value("zone_intrusion")
    browser.find_element(By.ID, "draw").click()
    overlay = browser.find_element(By.ID, "overlay")
    width, height = overlay.size["width"], overlay.size["height"]
    zone = [(min(max(x, 4.0), 1276.0), min(max(y, 4.0), 716.0)) for x, y in camera.junction.carriageway]
    for x, y in zone:   # offsets from the element's centre (Selenium 4)
        ActionChains(browser).move_to_element_with_offset(
            overlay, int(x * width / 1280 - width / 2), int(y * height / 720 - height / 2)).click().perform()
    browser.find_element(By.ID, "finish").click()
    wait(browser).until(lambda b: "type: zone_intrusion" in _text(b, "#diff"))
    assert _text(b := browser, "#problems") == "", _text(b, "#problems")
    drawn = yaml.safe_load(config.read_text())["cameras"][0]["rules"]
    assert drawn == []   # a preview changes nothing

    apply = browser.find_element(By.ID, "apply")
    wait(browser).until(lambda b: apply.is_enabled())
    apply.click()
    wait(browser, 90).until(lambda b: b.find_element(By.ID, "apply-status").get_attribute("data-done"))
    assert browser.find_element(By.ID, "apply-status").get_attribute("data-done") == "applied", \
        _text(browser, "#apply-status")
    rules = yaml.safe_load(config.read_text())["cameras"][0]["rules"]
    assert len(rules) == 1 and rules[0]["type"] == "zone_intrusion" and len(rules[0]["zone"]) == len(zone)
    for (x, y), (zx, zy) in zip(rules[0]["zone"], zone):   # where it was clicked, to a pixel or two
        assert abs(x - zx) <= 2.5 and abs(y - zy) <= 2.5
    audit = (agent.state_dir / "audit.log").read_text()
    assert '"command":"config.apply"' in audit and '"by":"web:tech"' in audit

    # the next staged intrusion is reported in the drawn zone, with its evidence, on the events page
    browser.get(base + "/#events")
    wait(browser, 150).until(lambda b: any(
        "rule: zone_intrusion0" in e.text for e in b.find_elements(By.CSS_SELECTOR, ".event")))
    event = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".event") if "rule: zone_intrusion0" in e.text)
    assert "violation.zone_intrusion" in event.text and "class: person" in event.text
    wait(browser).until(lambda b: event.find_elements(By.CSS_SELECTOR, ".evidence img"))
    image = event.find_elements(By.CSS_SELECTOR, ".evidence img")[0]
    wait(browser).until(lambda b: b.execute_script("return arguments[0].naturalWidth", image) > 0)
