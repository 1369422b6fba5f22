"use strict";
// A camera's page: its picture, refreshing, with the figures of its config drawn over it (SVG in
// the frame's own pixels), and the rule editor: draw, move and delete stop lines, zones, lane
// directions and ignore areas; see the change as a diff, checked as check-config checks it;
// apply it through config.apply. The edits are a list of operations the server replays on the
// config file each time (agent/web/editor.py): nothing is kept on the server between requests.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = {line: "#ff3b30", arrow: "#ffcc00", polygon: "#0a84ff", path: "#bf5af2"};

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const CameraPage = {
  interval: 1000,
  device: null,
  rules: null,       // {base, frame, shapes, kinds, can_apply}
  shapes: [],
  ops: [],
  drawing: null,     // {kind, points} while a new figure is drawn
  selected: null,    // index into shapes
  drag: null,
  picture: null,     // object URL of the shown frame

  enter(main, device) {
    this.device = device;
    this.rules = null;
    this.shapes = [];
    this.ops = [];
    this.drawing = null;
    this.selected = null;
    main.replaceChildren(
      el("h2", {}, "Camera ", device, " ", el("a", {href: "#cameras", class: "small muted"}, "all cameras")),
      el("div", {class: "camera-layout"},
        el("div", {class: "stage", id: "stage"},
          el("img", {id: "picture", alt: `${device}, now`}),
          document.createElementNS(SVG, "svg")),
        el("aside", {class: "card tools"},
          el("h3", {}, "Rules"),
          el("p", {class: "muted", id: "frame-info"}, "waiting for the picture…"),
          el("label", {}, "New figure ", el("select", {id: "kind"})),
          el("div", {class: "buttons"},
            el("button", {id: "draw", onclick: () => this.startDrawing()}, "Draw"),
            el("button", {id: "finish", onclick: () => this.finishDrawing(), disabled: true}, "Finish"),
            el("button", {id: "cancel", onclick: () => this.cancelDrawing(), disabled: true}, "Cancel")),
          el("p", {class: "hint", id: "hint"}, "Drag a corner or a figure to move it; click one to select it."),
          el("div", {class: "buttons"},
            el("button", {id: "delete", onclick: () => this.removeSelected(), disabled: true}, "Delete selected"),
            el("button", {id: "undo", onclick: () => this.undo(), disabled: true}, "Undo")),
          el("h3", {}, "Change"),
          el("ul", {id: "problems", class: "error"}),
          el("pre", {id: "diff", class: "diff"}, "no change yet"),
          el("button", {id: "apply", class: "primary", onclick: () => this.apply(), disabled: true},
             "Check and apply"),
          el("p", {id: "apply-status", class: "result"}))));
    const overlay = main.querySelector("svg");
    overlay.id = "overlay";
    overlay.addEventListener("mousedown", (e) => this.onDown(e));
    overlay.addEventListener("mousemove", (e) => this.onMove(e));
    window.addEventListener("mouseup", this._up = (e) => this.onUp(e));
    overlay.addEventListener("dblclick", (e) => { e.preventDefault(); if (this.drawing) this.finishDrawing(); });
    this.loadRules();
  },

  leave() {
    window.removeEventListener("mouseup", this._up);
    if (this.picture) URL.revokeObjectURL(this.picture);
    this.picture = null;
  },

  async loadRules() {
    const {ok, data} = await api(`/api/cameras/${encodeURIComponent(this.device)}/rules`);
    if (!ok) { this.say(data.error.message, true); return; }
    this.rules = data;
    this.shapes = data.shapes;
    this.ops = [];
    const select = document.getElementById("kind");
    select.replaceChildren(...data.kinds.map((k) => el("option", {value: k.key}, k.label)));
    if (!data.can_apply) document.getElementById("apply").title = "a viewer account may look, not apply";
    this.setFrame(data.frame);
    this.render();
    this.showChange({diff: "", problems: [], changed: false});
  },

  setFrame(frame) {
    if (!frame) return;
    const overlay = document.getElementById("overlay");
    overlay.setAttribute("viewBox", `0 0 ${frame[0]} ${frame[1]}`);
    overlay.setAttribute("preserveAspectRatio", "none");
    document.getElementById("frame-info").textContent = `frame ${frame[0]} × ${frame[1]} px`;
    this.frame = frame;
  },

  // refreshed every second by the router
  async draw() {
    const response = await fetch(`/api/cameras/${encodeURIComponent(this.device)}/picture`,
                                 {credentials: "same-origin"});
    if (response.status === 401) { window.location.href = "/login"; return; }
    if (response.status === 503) {
      const data = await response.json().catch(() => ({}));
      document.getElementById("frame-info").textContent = (data.error && data.error.message) || "no picture";
      return;
    }
    if (!response.ok) return;
    const width = Number(response.headers.get("X-Frame-Width"));
    const height = Number(response.headers.get("X-Frame-Height"));
    if (!this.frame || this.frame[0] !== width || this.frame[1] !== height) this.setFrame([width, height]);
    const url = URL.createObjectURL(await response.blob());
    const img = document.getElementById("picture");
    if (!img) { URL.revokeObjectURL(url); return; }
    img.src = url;
    if (this.picture) URL.revokeObjectURL(this.picture);
    this.picture = url;
    img.dataset.t = response.headers.get("X-Frame-Time");
  },

  // -- drawing the figures ------------------------------------------------------------------------

  render() {
    const overlay = document.getElementById("overlay");
    if (!overlay) return;
    const scale = this.frame ? this.frame[0] / Math.max(overlay.clientWidth, 1) : 1;
    overlay.replaceChildren();
    const defs = svg("defs");
    for (const [kind, colour] of Object.entries(COLOURS)) {
      const marker = svg("marker", {id: `head-${kind}`, viewBox: "0 0 10 10", refX: "8", refY: "5",
                                    markerWidth: "5", markerHeight: "5", orient: "auto-start-reverse"});
      marker.append(svg("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: colour}));
      defs.append(marker);
    }
    overlay.append(defs);
    this.shapes.forEach((shape, index) => overlay.append(this.figure(shape, index, scale)));
    if (this.drawing && this.drawing.points.length) {
      const kind = this.drawing.kind;
      overlay.append(this.figure({kind: kind.kind, label: "new", points: this.drawing.points}, -1, scale));
    }
  },

  figure(shape, index, scale) {
    const group = svg("g", {class: `figure ${shape.kind}${index === this.selected ? " selected" : ""}`,
                            "data-index": String(index), "data-label": shape.label});
    // an area to ignore (detect.ignore, motion.ignore) is not a rule: grey and dashed
    const ignore = shape.path && (shape.path[0] === "detect" || shape.path[0] === "motion");
    const colour = ignore ? "#9aa3ad" : COLOURS[shape.kind] || "#fff";
    const points = shape.points.map((p) => p.join(",")).join(" ");
    const width = 3 * scale;
    let body;
    if (shape.kind === "polygon") {
      body = svg("polygon", {points, fill: colour, "fill-opacity": ignore ? "0.08" : "0.18", stroke: colour,
                             "stroke-width": width});
      if (ignore) body.setAttribute("stroke-dasharray", `${8 * scale} ${6 * scale}`);
    } else {
      body = svg("polyline", {points, fill: "none", stroke: colour, "stroke-width": width});
      if (shape.kind === "arrow" || shape.kind === "path") body.setAttribute("marker-end", `url(#head-${shape.kind})`);
    }
    body.dataset.role = "body";
    group.append(body);
    if (index >= 0) {
      shape.points.forEach((p, i) => {
        const handle = svg("circle", {cx: p[0], cy: p[1], r: 7 * scale, class: "handle",
                                      fill: "#fff", stroke: colour, "stroke-width": 2 * scale});
        handle.dataset.role = "handle";
        handle.dataset.point = String(i);
        group.append(handle);
      });
    }
    const [x, y] = shape.points[0];
    const label = svg("text", {x: x + 8 * scale, y: y - 8 * scale, "font-size": 14 * scale, fill: "#fff",
                               stroke: "#000", "stroke-width": 3 * scale, "paint-order": "stroke"});
    label.textContent = shape.label;
    group.append(label);
    return group;
  },

  at(event) {
    const overlay = document.getElementById("overlay");
    const point = overlay.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const p = point.matrixTransform(overlay.getScreenCTM().inverse());
    return [Math.round(p.x * 10) / 10, Math.round(p.y * 10) / 10];
  },

  onDown(event) {
    if (!this.frame) return;
    const p = this.at(event);
    if (this.drawing) {
      this.drawing.points.push(p);
      const need = this.drawing.kind.kind === "line" || this.drawing.kind.kind === "arrow" ? 2 : null;
      if (need && this.drawing.points.length >= need) this.finishDrawing();
      else this.render();
      this.hintDrawing();
      return;
    }
    const target = event.target;
    const group = target.closest("g.figure");
    if (!group) { this.select(null); return; }
    const index = Number(group.dataset.index);
    this.select(index);
    const point = target.dataset.role === "handle" ? Number(target.dataset.point) : null;
    this.drag = {index, point, from: p, original: this.shapes[index].points.map((q) => q.slice()), moved: false};
    event.preventDefault();
  },

  onMove(event) {
    if (!this.drag) return;
    const p = this.at(event);
    const shape = this.shapes[this.drag.index];
    const dx = p[0] - this.drag.from[0];
    const dy = p[1] - this.drag.from[1];
    if (Math.abs(dx) + Math.abs(dy) < 1) return;
    this.drag.moved = true;
    shape.points = this.drag.original.map((q, i) =>
      this.drag.point === null ? [q[0] + dx, q[1] + dy] : i === this.drag.point ? p : q.slice());
    this.render();
  },

  onUp() {
    const drag = this.drag;
    this.drag = null;
    if (!drag || !drag.moved) return;
    const shape = this.shapes[drag.index];
    const points = shape.points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
    this.edit({op: "move", path: shape.path, points});
  },

  select(index) {
    this.selected = index;
    document.getElementById("delete").disabled = index === null;
    this.render();
  },

  startDrawing() {
    const key = document.getElementById("kind").value;
    const kind = this.rules.kinds.find((k) => k.key === key);
    if (!kind) return;
    this.drawing = {kind, points: []};
    document.getElementById("finish").disabled = false;
    document.getElementById("cancel").disabled = false;
    document.getElementById("stage").classList.add("drawing");
    this.hintDrawing();
  },

  hintDrawing() {
    if (!this.drawing) return;
    const k = this.drawing.kind.kind;
    const n = this.drawing.points.length;
    document.getElementById("hint").textContent = k === "line" || k === "arrow"
      ? `Click the two ends on the picture (${n}/2).`
      : k === "polygon" ? `Click the corners around the area (${n} so far), then Finish (at least 3).`
        : `Click along the lane in the direction of travel (${n} so far), then Finish (at least 2).`;
  },

  finishDrawing() {
    const drawing = this.drawing;
    this.cancelDrawing();
    if (!drawing) return;
    this.edit({op: "add", kind: drawing.kind.key, points: drawing.points});
  },

  cancelDrawing() {
    this.drawing = null;
    document.getElementById("finish").disabled = true;
    document.getElementById("cancel").disabled = true;
    document.getElementById("stage").classList.remove("drawing");
    document.getElementById("hint").textContent = "Drag a corner or a figure to move it; click one to select it.";
    this.render();
  },

  removeSelected() {
    if (this.selected === null) return;
    const shape = this.shapes[this.selected];
    this.selected = null;
    document.getElementById("delete").disabled = true;
    this.edit({op: "remove", path: shape.remove});
  },

  undo() {
    this.ops.pop();
    this.preview();
  },

  // -- the change -------------------------------------------------------------------------------------

  async edit(op) {
    this.ops.push(op);
    const accepted = await this.preview();
    if (!accepted) { this.ops.pop(); await this.preview(); }
  },

  async preview() {
    document.getElementById("undo").disabled = this.ops.length === 0;
    const {ok, data} = await post(`/api/cameras/${encodeURIComponent(this.device)}/rules/preview`,
                                  {base: this.rules.base, ops: this.ops});
    if (!ok) {
      this.say(data.error.message, true);
      return false;
    }
    this.shapes = data.shapes;
    this.render();
    this.showChange(data);
    return true;
  },

  showChange(data) {
    const problems = document.getElementById("problems");
    problems.replaceChildren(...(data.problems || []).map((p) => el("li", {}, p)));
    const diff = document.getElementById("diff");
    diff.replaceChildren(...(data.diff ? data.diff.split("\n").map((line) =>
      el("span", {class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : ""}, line + "\n"))
      : ["no change yet"]));
    const apply = document.getElementById("apply");
    apply.disabled = !(data.changed && !(data.problems || []).length && this.rules.can_apply);
    if ((data.problems || []).length) this.say("check-config refuses this change: see the problems above", true);
    else if (data.changed) this.say("checked: no problem. Apply it when it looks right.", false);
    else this.say("", false);
  },

  say(text, bad) {
    const out = document.getElementById("apply-status");
    if (!out) return;
    out.className = bad ? "result error" : "result ok";
    out.textContent = text;
  },

  async apply() {
    document.getElementById("apply").disabled = true;
    const {ok, data} = await post(`/api/cameras/${encodeURIComponent(this.device)}/rules/apply`,
                                  {base: this.rules.base, ops: this.ops});
    if (!ok) { this.say(data.error.message, true); return; }
    this.say("Applying: the agent restarts on the new config…", false);
    const began = Date.now();
    const wait = async () => {
      let state = null;
      try { state = (await api("/api/apply")).data; } catch (err) { /* restarting */ }
      if (state && !state.applying) {
        const last = state.results[state.results.length - 1];
        await this.loadRules();
        if (last && !last.ok) this.say(`Rolled back: ${last.result.message}`, true);
        else this.say("Applied: the agent runs on the new rules.", false);
        document.getElementById("apply-status").dataset.done = last && !last.ok ? "rolled_back" : "applied";
        return;
      }
      if (Date.now() - began < 120000) setTimeout(wait, 1000);
    };
    setTimeout(wait, 1000);
  },
};

window.CameraPage = CameraPage;
