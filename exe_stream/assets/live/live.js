// exe-stream live: the page. Captures the webcam, sends frames to the local server over a
// WebSocket (binary "EXF1" messages, see exe_stream/live/wire.py), draws each face's box and
// top two emotions, the session's stacked timeline, and the end-of-session summary.
// Nothing is loaded from or sent to anywhere but the server that served this page.
"use strict";

// Frames sent and not yet answered; the camera's other frames are not sent. One keeps the
// latency lowest (no frame waits on the server behind another); two keep the server busy while
// a result travels back (more frames/s, each a little older): benchmarks/live_latency.py
// measures both. "?inflight=2" picks two.
const MAX_IN_FLIGHT = Math.max(1, Math.min(4, +(new URLSearchParams(location.search).get("inflight") || 1)));
const COLOURS = ["#e15759", "#76b041", "#9c6ade", "#f0b429", "#4e79a7", "#59a1a8", "#bab0ac",
                 "#ff9da7", "#edc948", "#b07aa1"];
const $ = (id) => document.getElementById(id);

const live = window.exeLive = {
  state: "starting",                               // the camera: starting | camera | no-camera
  conn: "connecting",                              // the server: connecting | open | busy | closed
  hello: null, last: null, results: 0, latencies: [], resultTimes: [],
  summary: null, saved: null, messages: [], rejected: [], dropped: 0, timeline: [],
  history: [],                                     // the last 50 results, as the server sent them
};
let ws = null, inFlight = 0, seq = 0, sending = false, closedWhy = null;

function showMessage(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = false;
  live.messages.push(text);
}

// ---------------------------------------------------------------- connection
function connect() {
  ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    sending = false;
    setButtons(false);
    if (closedWhy === "busy") return;            // the busy message is already shown
    live.conn = "closed";
    if (ev.code === 1009) {
      showMessage("The server refused a frame that was too large and closed the connection. Reload the page.");
    } else {
      showMessage("The exe-stream live server has stopped (or the connection to it was lost). " +
                  "Start it again with `exe-stream live` and reload this page.");
    }
  };
  ws.onerror = () => {};                           // onclose follows and says what happened
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      live.conn = "open";
      live.hello = msg;
      live.timeline = [];
      $("session-id").textContent = msg.session_id;
      $("ethics").textContent = msg.ethics;
      buildLegend(msg.models[0].labels);
      $("timeline-caption").textContent =
        `Emotion shares over time, largest face (${msg.models[0].id}); since the start:`;
      $("summary").hidden = true;
      $("saved").hidden = true;
      setButtons(true);
      sending = live.state === "camera";
      break;
    case "result":
      inFlight = Math.max(0, inFlight - 1);
      live.last = msg;
      live.results += 1;
      live.history.push(msg);
      if (live.history.length > 50) live.history.shift();
      live.dropped = msg.dropped;
      requestAnimationFrame(() => {
        drawOverlay(msg);
        const now = performance.now();
        live.latencies.push(now - msg.t);
        if (live.latencies.length > 100) live.latencies.shift();
        live.resultTimes.push(now);
        addToTimeline(msg);
        updateMeters(msg);
      });
      break;
    case "dropped":
      inFlight = Math.max(0, inFlight - 1);
      live.dropped = msg.dropped;
      break;
    case "rejected":
      inFlight = Math.max(0, inFlight - 1);
      live.rejected.push(msg.reason);
      break;
    case "error":
      if (msg.seq !== undefined) inFlight = Math.max(0, inFlight - 1);
      showMessage(msg.message);
      break;
    case "summary":
      live.summary = msg;
      showSummary(msg);
      break;
    case "saved":
      live.saved = msg;
      $("saved").textContent = `Saved session ${msg.session_id} (${msg.frames} frames) to ${msg.out}. ` +
        `Read it with: exe-stream stats ${msg.out}`;
      $("saved").hidden = false;
      break;
    case "busy":
      closedWhy = "busy";
      showMessage(msg.message);
      live.conn = "busy";
      break;
    case "bye":
      closedWhy = "bye";
      break;
  }
}

function setButtons(on) {
  for (const id of ["end", "save", "new"]) $(id).disabled = !on;
}

// ---------------------------------------------------------------- camera
async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showMessage("This browser gives the page no camera access (getUserMedia is missing). " +
                "Open the page in a current Chrome, Chromium or Firefox at http://127.0.0.1.");
    live.state = "no-camera";
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (e) {
    live.state = "no-camera";
    if (e.name === "NotAllowedError" || e.name === "SecurityError" || e.name === "PermissionDeniedError") {
      showMessage("Camera permission was denied. Allow the camera for this page (the camera icon " +
                  "in the address bar) and reload. Nothing leaves this machine.");
    } else if (e.name === "NotFoundError" || e.name === "OverconstrainedError" || e.name === "DevicesNotFoundError") {
      showMessage("No camera found. Connect a camera and reload, or analyse a recording with " +
                  "`exe-stream live --source FILE`.");
    } else if (e.name === "NotReadableError" || e.name === "TrackStartError") {
      showMessage("The camera is busy (another program is using it). Close that program and reload.");
    } else {
      showMessage(`The camera could not be started (${e.name}: ${e.message}).`);
    }
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play().catch(() => {});
  live.state = "camera";
  sending = ws && ws.readyState === WebSocket.OPEN && live.hello !== null;
  const track = stream.getVideoTracks()[0];
  track.onended = () => showMessage("The camera stopped (it was unplugged or switched off). Reload to start again.");
  // "?capture=canvas" forces the canvas path (what browsers without MediaStreamTrackProcessor use).
  const viaCanvas = new URLSearchParams(location.search).get("capture") === "canvas";
  if (typeof MediaStreamTrackProcessor !== "undefined" && !viaCanvas) {
    readTrack(track);                              // the camera's own frames (I420/NV12 as captured)
  } else {
    grabFromVideo(video);                          // fallback: RGBA through a canvas
  }
}

function canSend() {
  return sending && ws && ws.readyState === WebSocket.OPEN && inFlight < MAX_IN_FLIGHT;
}

async function readTrack(track) {
  const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
  for (;;) {
    const { value: frame, done } = await reader.read();
    if (done) return;
    const t = performance.now();
    try {
      if (canSend()) await sendVideoFrame(frame, t);
    } catch (e) {
      showMessage(`A camera frame could not be sent (${e.name}: ${e.message}).`);
    } finally {
      frame.close();
    }
  }
}

function colourOf(frame) {
  const cs = frame.colorSpace || {};
  const extra = {};
  if (cs.matrix === "bt709") extra.matrix = "bt709";
  else if (cs.matrix === "bt470bg" || cs.matrix === "smpte170m") extra.matrix = "bt601";
  if (cs.fullRange === true || cs.fullRange === false) extra.full_range = cs.fullRange;
  return extra;
}

async function sendVideoFrame(frame, t) {
  const w = frame.visibleRect ? frame.visibleRect.width : frame.displayWidth;
  const h = frame.visibleRect ? frame.visibleRect.height : frame.displayHeight;
  let fmt = frame.format, pixels;
  if (["I420", "I420A", "NV12", "RGBA", "RGBX", "BGRA", "BGRX"].includes(fmt)) {
    pixels = new Uint8Array(frame.allocationSize());
    await frame.copyTo(pixels);
    if (fmt === "I420A") {                         // drop the alpha plane
      fmt = "I420";
      pixels = pixels.subarray(0, w * h + 2 * Math.ceil(w / 2) * Math.ceil(h / 2));
    }
    send(fmt, w, h, pixels, t, fmt.startsWith("I4") || fmt === "NV12" ? colourOf(frame) : {});
  } else {                                         // other layouts: draw, read back RGBA
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(frame, 0, 0);
    send("RGBA", w, h, new Uint8Array(ctx.getImageData(0, 0, w, h).data.buffer), t, {});
  }
}

function grabFromVideo(video) {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const step = () => {
    if (canSend() && video.videoWidth > 0) {
      const t = performance.now();
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
      send("RGBA", canvas.width, canvas.height, new Uint8Array(img.data.buffer), t, {});
    }
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(step);
    else requestAnimationFrame(step);
  };
  step();
}

function send(fmt, w, h, pixels, t, extra) {
  const header = new TextEncoder().encode(JSON.stringify({ seq: seq++, t, w, h, format: fmt, ...extra }));
  const msg = new Uint8Array(8 + header.length + pixels.length);
  msg.set([0x45, 0x58, 0x46, 0x31], 0);             // "EXF1"
  new DataView(msg.buffer).setUint32(4, header.length, true);
  msg.set(header, 8);
  msg.set(pixels, 8 + header.length);
  ws.send(msg.buffer);
  inFlight += 1;
  $("size").textContent = `${w}x${h} ${fmt}`;
}

// ---------------------------------------------------------------- overlay
function pct(p) { return `${Math.round(100 * p)}%`; }

function drawOverlay(msg) {
  const overlay = $("overlay");
  overlay.replaceChildren();
  const stage = $("stage");
  const sw = stage.clientWidth, sh = stage.clientHeight;
  // The video is shown whole (object-fit: contain) and mirrored, like a mirror.
  const scale = Math.min(sw / msg.width, sh / msg.height);
  const vw = msg.width * scale, vh = msg.height * scale;
  const ox = (sw - vw) / 2, oy = (sh - vh) / 2;
  const models = live.hello ? live.hello.models : [];
  for (const face of msg.faces) {
    const [x0, y0, x1, y1] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.style.left = `${ox + (1 - x1) * vw}px`;
    box.style.top = `${oy + y0 * vh}px`;
    box.style.width = `${(x1 - x0) * vw}px`;
    box.style.height = `${(y1 - y0) * vh}px`;
    const label = document.createElement("div");
    label.className = "face-label" + (y0 * vh < 24 * (models.length + 1) ? " below" : "");
    for (const m of models) {
      const r = face.models[m.id];
      if (models.length > 1) {
        const name = document.createElement("span");
        name.className = "model-name";
        name.textContent = m.id;
        label.appendChild(name);
      }
      r.top.forEach(([lbl, p], i) => {
        const e = document.createElement("span");
        e.className = "emotion" + (i > 0 ? " second" : "");
        e.dataset.label = lbl;
        e.dataset.p = p;
        e.textContent = lbl;
        const ps = document.createElement("span");
        ps.className = "p";
        ps.textContent = pct(p);
        e.appendChild(ps);
        label.appendChild(e);
      });
    }
    box.appendChild(label);
    overlay.appendChild(box);
  }
}

function quantile(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function updateMeters(msg) {
  const now = performance.now();
  while (live.resultTimes.length && live.resultTimes[0] < now - 2000) live.resultTimes.shift();
  const n = live.resultTimes.length;
  const span = n > 1 ? (live.resultTimes[n - 1] - live.resultTimes[0]) / 1000 : 0;
  $("fps").textContent = span > 0 ? ((n - 1) / span).toFixed(1) : "–";
  const lat = live.latencies.slice(-50);
  $("latency").textContent = `${Math.round(quantile(lat, 0.5))} ms (p95 ${Math.round(quantile(lat, 0.95))} ms)`;
  $("dropped").textContent = String(msg.dropped);
}

// ---------------------------------------------------------------- session view
function buildLegend(labels) {
  const ul = $("legend");
  ul.replaceChildren();
  labels.forEach((lbl, i) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "sw";
    sw.style.background = COLOURS[i % COLOURS.length];
    li.appendChild(sw);
    const txt = document.createElement("span");
    txt.id = `share-${i}`;
    txt.textContent = `${lbl} –`;
    li.appendChild(txt);
    ul.appendChild(li);
  });
}

function addToTimeline(msg) {
  const model = live.hello.models[0];
  const face = msg.faces[0];                       // the largest face
  live.timeline.push({ t: msg.pts_seconds, p: face ? face.models[model.id].smooth : null });
  drawTimeline();
}

let lastDraw = 0;
function drawTimeline(force) {
  const now = performance.now();
  if (!force && now - lastDraw < 200) return;
  lastDraw = now;
  const c = $("timeline"), ctx = c.getContext("2d");
  const W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const tl = live.timeline;
  if (!tl.length || !live.hello) return;
  const labels = live.hello.models[0].labels;
  const tMax = Math.max(10, tl[tl.length - 1].t);
  // Average the probabilities of the samples falling in each pixel column, then stack them.
  const cols = new Array(W).fill(null).map(() => ({ n: 0, sum: new Array(labels.length).fill(0) }));
  for (const s of tl) {
    if (!s.p) continue;
    const x = Math.min(W - 1, Math.floor((s.t / tMax) * W));
    cols[x].n += 1;
    s.p.forEach((v, i) => { cols[x].sum[i] += v; });
  }
  let prev = null;
  for (let x = 0; x < W; x++) {
    const col = cols[x].n ? cols[x].sum.map((v) => v / cols[x].n) : prev;
    if (!col) continue;
    if (cols[x].n) prev = col;
    if (x > 0 && !cols[x].n && x * tMax / W > tl[tl.length - 1].t) break;
    let y = H;
    col.forEach((v, i) => {
      const h = v * H;
      ctx.fillStyle = COLOURS[i % COLOURS.length];
      ctx.fillRect(x, y - h, 1, h);
      y -= h;
    });
  }
  // Shares since the start: the mean (smoothed) probability of each emotion.
  const withFace = tl.filter((s) => s.p);
  labels.forEach((lbl, i) => {
    const mean = withFace.length ? withFace.reduce((a, s) => a + s.p[i], 0) / withFace.length : NaN;
    $(`share-${i}`).textContent = `${lbl} ${isNaN(mean) ? "–" : pct(mean)}`;
  });
}

function showSummary(msg) {
  const div = $("summary");
  div.replaceChildren();
  const h = document.createElement("h3");
  h.textContent = "What my face said";
  div.appendChild(h);
  const p = document.createElement("p");
  p.textContent = `${msg.frames} frames analysed over ${msg.seconds.toFixed(1)} s; a face in ${msg.frames_with_face}.`;
  div.appendChild(p);
  for (const [model, shares] of Object.entries(msg.models)) {
    const said = shares.filter((s) => s.top_share > 0);
    const line = document.createElement("p");
    line.className = "said";
    line.textContent = said.length
      ? `${Object.keys(msg.models).length > 1 ? model + ": " : ""}mostly ${said[0].label} (${pct(said[0].top_share)} of the time)` +
        (said.length > 1 ? `, then ${said[1].label} (${pct(said[1].top_share)})` : "") +
        (said.length > 2 ? `; also ${said.slice(2).map((s) => `${s.label} ${pct(s.top_share)}`).join(", ")}` : "") + "."
      : "No face was seen.";
    div.appendChild(line);
  }
  div.hidden = false;
}

$("end").onclick = () => {
  sending = false;
  drawTimeline(true);
  ws.send(JSON.stringify({ type: "end" }));
};
$("save").onclick = () => ws.send(JSON.stringify({ type: "save" }));
$("new").onclick = () => {
  ws.send(JSON.stringify({ type: "new" }));
  $("overlay").replaceChildren();
};

connect();
startCamera();
