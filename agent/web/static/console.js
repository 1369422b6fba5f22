"use strict";
// The console's pages: one HTML page, a view per #hash, each polling its JSON once a second.
// Everything from the gateway is put in the page as text (el()), never as HTML.

const Console = {me: null, timer: null, page: null};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = {"Content-Type": "application/json"};
  if (Console.me) headers["X-CSRF-Token"] = Console.me.csrf;
  const response = await fetch(path, {credentials: "same-origin", ...options, headers});
  if (response.status === 401) {
    window.location.href = "/login";
    throw new Error("login required");
  }
  const data = await response.json().catch(() => ({}));
  if (response.status === 503 && data.error && data.error.code === "restarting") {
    showBanner("The agent is restarting on a new config…");
    throw new Error("restarting");
  }
  hideBanner();
  return {ok: response.ok, status: response.status, data};
}

function post(path, body) {
  return api(path, {method: "POST", body: JSON.stringify(body)});
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  document.getElementById("banner").hidden = true;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function state(online) {
  if (online === null || online === undefined) return el("span", {class: "state unknown"}, "not heard yet");
  return el("span", {class: online ? "state ok" : "state bad"}, online ? "online" : "offline");
}

function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return String(v);
}

// -- pages --------------------------------------------------------------------------------------

const Pages = {};

Pages.overview = {
  async draw(main) {
    const {data} = await api("/api/overview");
    const up = data.uplink || {};
    const buffer = data.buffer || {};
    const evictions = Object.entries(buffer.evictions || {});
    const boundaries = Object.entries(data.boundaries || {});
    main.replaceChildren(
      el("h2", {}, "Overview"),
      el("div", {class: "cards"},
        el("section", {class: "card", id: "card-uplink"},
          el("h3", {}, "Uplink"),
          el("p", {class: "big"}, el("span", {class: up.state === "connected" ? "state ok" : "state bad",
                                               id: "uplink-state"}, up.state || "?")),
          el("p", {}, `connects ${up.connects ?? 0} · published ${up.published ?? 0} · acked ${up.acked ?? 0}`),
          up.last_error ? el("p", {class: "error"}, up.last_error) : null),
        el("section", {class: "card", id: "card-buffer"},
          el("h3", {}, "Buffer"),
          el("p", {class: "big", id: "buffer-depth"}, `${buffer.depth ?? 0} queued`),
          el("p", {}, `oldest ${buffer.oldest_age_s === null || buffer.oldest_age_s === undefined ? "—"
                                 : buffer.oldest_age_s + " s"} · ${bytes(buffer.bytes)} of ${bytes(buffer.max_bytes)}`),
          el("p", {}, "evictions: ", evictions.length
            ? evictions.map(([k, n]) => `${k} ${n}`).join(", ") : "none"),
          buffer.write_errors ? el("p", {class: "error"}, `${buffer.write_errors} write errors`) : null),
        el("section", {class: "card"},
          el("h3", {}, "Devices"),
          el("p", {class: "big"}, `${data.devices.online} / ${data.devices.total} online`),
          el("p", {}, el("a", {href: "#devices"}, "see each device"))),
        el("section", {class: "card"},
          el("h3", {}, "Agent"),
          el("p", {}, `version ${data.agent} · up since ${new Date(data.started_ms).toLocaleString()}`),
          data.loop ? el("p", {}, `longest loop callback ${value(data.loop.max_callback_ms)} ms`) : null,
          data.commands ? el("p", {}, `commands from the centre: ${data.commands.received} received, `
                                      + `${data.commands.executed} executed`) : null,
          data.applying ? el("p", {class: "warn"}, "a new config is being applied") : null)),
      el("h3", {}, "Errors per boundary"),
      el("table", {id: "boundaries"},
        el("thead", {}, el("tr", {}, el("th", {}, "where outside input enters"), el("th", {}, "failures"),
                                     el("th", {}, "last"), el("th", {}, "error"))),
        el("tbody", {}, boundaries.length ? boundaries.map(([name, b]) =>
          el("tr", {}, el("td", {}, name), el("td", {class: b.failures ? "error" : ""}, b.failures),
             el("td", {}, b.last_failure_ms ? ago(b.last_failure_ms) : "—"), el("td", {}, b.last_error || ""))
        ) : el("tr", {}, el("td", {colspan: 4, class: "muted"}, "no input has failed")))));
  },
};

Pages.devices = {
  async draw(main) {
    const {data} = await api("/api/devices");
    const admin = Console.me.role === "admin";
    const previous = main.querySelector("#devices");
    const openInputs = previous ? previous.contains(document.activeElement) : false;
    if (openInputs) { // someone is typing a value: refresh the numbers only
      for (const device of data.devices) {
        for (const point of device.points) {
          const cell = document.getElementById(`v-${device.id}-${point.name}`);
          if (cell) cell.textContent = point.latest ? value(point.latest.v) : "—";
        }
      }
      return;
    }
    main.replaceChildren(el("h2", {}, "Devices"), el("div", {id: "devices"}, data.devices.map((device) =>
      el("section", {class: "card device", id: `device-${device.id}`},
        el("h3", {}, device.id, " ", el("span", {class: "muted"}, `${device.kind} · ${device.driver}`), " ",
           state(device.online)),
        el("p", {class: "muted"}, `last read ${ago(device.last_read_ms)} · ${device.readings} values · `
                                  + `${device.errors} errors`),
        device.last_error ? el("p", {class: "error"}, device.last_error) : null,
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", {}, "point"), el("th", {}, "value"), el("th", {}, "unit"),
                                       el("th", {}, "quality"), el("th", {}, ""))),
          el("tbody", {}, device.points.map((point) => el("tr", {},
            el("td", {}, point.name, point.writable ? el("span", {class: "tag"}, "writable") : null),
            el("td", {class: "value", id: `v-${device.id}-${point.name}`},
               point.latest ? value(point.latest.v) : "—"),
            el("td", {}, point.unit || ""),
            el("td", {class: point.latest && point.latest.q !== "good" ? "warn" : ""},
               point.latest ? point.latest.q : ""),
            el("td", {class: "actions"},
              el("button", {class: "small", onclick: () => readPoint(device.id, point.name)}, "Read"),
              point.writable && admin ? el("span", {},
                el("input", {id: `w-${device.id}-${point.name}`, size: 6, placeholder: "value"}),
                el("button", {class: "small", onclick: () => writePoint(device.id, point.name)}, "Write"))
                : null))))),
        result(device.id)))));
  },
};

// the outcome of the latest read or write per device: kept across the page's redraws
const Results = {};

function result(device) {
  const last = Results[device];
  return el("p", {class: `result ${last ? last.cls : ""}`, id: `r-${device}`}, last ? last.text : "");
}

function show(device, cls, text) {
  Results[device] = {cls, text};
  const out = document.getElementById(`r-${device}`);
  if (out) { out.className = `result ${cls}`; out.textContent = text; }
}

async function readPoint(device, point) {
  show(device, "", `reading ${point}…`);
  const {data} = await post(`/api/devices/${encodeURIComponent(device)}/read`, {point});
  if (data.ok) show(device, "ok", `${point} = ${value(data.result.v)} ${data.result.u || ""} (${data.result.q})`);
  else show(device, "error", `${point}: ${data.error.message}`);
}

async function writePoint(device, point) {
  const input = document.getElementById(`w-${device}-${point}`);
  let v = input.value.trim();
  if (v === "true" || v === "false") v = v === "true";
  else if (v !== "" && !Number.isNaN(Number(v))) v = Number(v);
  const {data} = await post(`/api/devices/${encodeURIComponent(device)}/write`, {point, value: v});
  if (data.ok) show(device, "ok", `${point} written: ${value(data.result.value)}`);
  else show(device, "error", `${point} not written: ${data.error.message}`);
  input.blur();
}

Pages.events = {
  async draw(main) {
    const {data} = await api("/api/events");
    main.replaceChildren(el("h2", {}, "Events"), el("p", {class: "muted"},
      "The latest events this agent reported, with their evidence, newest first (kept in memory)."),
      el("div", {id: "events"}, data.events.length ? data.events.map((event) =>
        el("section", {class: `card event sev-${event.severity}`, id: `event-${event.id}`},
          el("h3", {}, event.type, " ", el("span", {class: "muted"}, `on ${event.device} · ${event.severity} · `
            + new Date(event.t || event.ts).toLocaleTimeString())),
          el("p", {class: "data"}, Object.entries(event.data || {}).filter(([, v]) => typeof v !== "object")
            .map(([k, v]) => `${k}: ${value(v)}`).join(" · ")),
          el("div", {class: "evidence"}, event.files.map((file) => {
            const href = `/api/events/${encodeURIComponent(event.id)}/files/${encodeURIComponent(file.name)}`;
            return file.type.startsWith("image/")
              ? el("a", {href, target: "_blank"}, el("img", {src: href, alt: file.name, title: file.name}))
              : file.type.startsWith("video/")
                ? el("a", {href, class: "clip"}, `▶ ${file.name} (${bytes(file.bytes)})`)
                : el("a", {href}, file.name);
          }))))
        : el("p", {class: "muted"}, "no event yet")));
  },
};

Pages.cameras = {
  async draw(main) {
    const {data} = await api("/api/cameras");
    main.replaceChildren(el("h2", {}, "Cameras"), el("div", {class: "cards"}, data.cameras.length
      ? data.cameras.map((camera) => el("a", {class: "card camera", href: `#camera/${camera.id}`},
          el("h3", {}, camera.id, " ", state(camera.online)),
          el("img", {src: `/api/cameras/${encodeURIComponent(camera.id)}/picture?t=${Date.now()}`, alt: camera.id})))
      : el("p", {class: "muted"}, "no camera on this gateway")));
  },
  interval: 5000,
};

// -- routing --------------------------------------------------------------------------------------

function route() {
  clearTimeout(Console.timer);
  if (Console.page && Console.page.leave) Console.page.leave();
  const hash = window.location.hash.replace(/^#/, "") || "overview";
  const [name, arg] = hash.split("/");
  const page = name === "camera" ? window.CameraPage : Pages[name] || Pages.overview;
  Console.page = page;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active",
    a.id === `nav-${name === "camera" ? "cameras" : name}`));
  const main = document.getElementById("main");
  main.replaceChildren();
  if (page.enter) page.enter(main, decodeURIComponent(arg || ""));
  const tick = async () => {
    if (Console.page !== page) return;
    try { await page.draw(main, decodeURIComponent(arg || "")); } catch (err) { /* shown by api() */ }
    if (Console.page === page && page.interval !== 0) Console.timer = setTimeout(tick, page.interval || 1000);
  };
  tick();
}

async function start() {
  const response = await fetch("/api/me", {credentials: "same-origin"});
  if (!response.ok) { window.location.href = "/login"; return; }
  Console.me = await response.json();
  document.getElementById("who").textContent = `${Console.me.user} (${Console.me.role})`;
  document.getElementById("logout").addEventListener("click", async () => {
    await post("/api/logout", {});
    window.location.href = "/login";
  });
  api("/api/overview").then(({data}) => {
    document.getElementById("gateway").textContent = `${data.gateway} · ${data.site}`;
  }).catch(() => {});
  window.addEventListener("hashchange", route);
  route();
}

window.Console = Console;
window.api = api;
window.post = post;
window.el = el;
document.addEventListener("DOMContentLoaded", start);
