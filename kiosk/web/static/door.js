// The door screen: follows the loop's state (Server-Sent Events from /door/state) and shows the mirrored preview
// (MJPEG from /door/preview.mjpg). Every word comes from the catalogue in <body data-config>; the loop sends codes.
// The screen is never trusted for the door: the relay is the loop's alone.

const body = document.body;
const cfg = JSON.parse(body.dataset.config);
const $ = (id) => document.getElementById(id);
const icon = (name) => new URL(`icons/${name}.svg`, import.meta.url).href;

// Catalogue keys, named in full so tests can check each one exists (tests/test_web_i18n.py).
const PROMPTS = {
  "come-closer": ["door.prompt.come-closer", "closer"],
  "look-at-camera": ["door.prompt.look-at-camera", "camera"],
  "blink": ["door.prompt.blink", "eye"],
  "turn-left": ["door.prompt.turn-left", "arrow-left"],
  "turn-right": ["door.prompt.turn-right", "arrow-right"],
  "hold-still": ["door.prompt.hold-still", "hold"],
};
const FACES = {
  detected: ["door.face.detected", "face"],
  checking: ["door.face.checking", "scan"],
  challenge: ["door.face.challenge", "eye"],
  granted: ["door.face.granted", "check"],
  denied: ["door.face.denied", "cross"],
  unknown: ["door.face.unknown", "question"],
};
const RESULTS = {
  granted: ["door.result.welcome", "door.result.granted.detail", "check"],
  denied: ["door.result.denied", "door.result.denied.detail", "cross"],
  unknown: ["door.result.unknown", "door.result.unknown.detail", "question"],
};
const SERVICES = {
  "down": ["door.down", "door.down.detail", "out-of-service"],
  "camera-down": ["door.camera-down", "door.camera-down.detail", "camera-off"],
  "starting": ["door.starting", "door.starting.detail", "hourglass"],
  "stopping": ["door.stopping", "door.stopping.detail", "out-of-service"],
};

export function text(key, params = {}) {
  const template = cfg.strings[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

let shownSeq = null; // the result on screen (or last shown), so one decision shows once
let resultTimer = null;
let prompt = null; // {code, remaining_s, total_s, at}
let previewOpen = false;
let previewTry = 0;
let audio = null;

function setView() {
  let view = "idle";
  const service = body.dataset.service;
  if (service !== "ok") view = service === "" ? "connecting" : "down";
  else if (!$("result").hidden) view = "result";
  else if ($("faces").childElementCount > 0 || prompt) view = "live";
  body.dataset.view = view;
}

function say(message) {
  $("say").textContent = message;
}

// --- preview -------------------------------------------------------------------------------------------------

function openPreview() {
  if (previewOpen) return;
  previewOpen = true;
  previewTry += 1;
  const img = $("preview");
  img.src = `${cfg.preview_url}?n=${previewTry}`;
}

function closePreview() {
  if (!previewOpen) return;
  previewOpen = false;
  const img = $("preview");
  img.hidden = true;
  img.removeAttribute("src");
}

$("preview").addEventListener("load", (event) => {
  const img = event.target;
  img.hidden = false;
  if (img.naturalWidth > 0 && img.naturalHeight > 0) {
    $("frame").style.setProperty("--ratio", String(img.naturalWidth / img.naturalHeight));
  }
});
$("preview").addEventListener("error", () => {
  // the stream broke (the loop went away): reopen it a second later if the loop is still said to be up
  previewOpen = false;
  $("preview").hidden = true;
  setTimeout(() => { if (body.dataset.service === "ok") openPreview(); }, 1000);
});

// --- faces ---------------------------------------------------------------------------------------------------

function renderFaces(faces) {
  const layer = $("faces");
  const seen = new Set();
  for (const face of faces) {
    const id = `face-${face.track}`;
    seen.add(id);
    let box = document.getElementById(id);
    if (!box) {
      box = document.createElement("div");
      box.id = id;
      box.className = "face";
      const label = document.createElement("span");
      label.className = "face-label";
      const img = document.createElement("img");
      img.alt = "";
      const words = document.createElement("span");
      label.append(img, words);
      box.append(label);
      layer.append(box);
    }
    const [key, iconName] = FACES[face.state] ?? FACES.detected;
    const [x, y, w, h] = face.box;
    box.style.left = `${x * 100}%`;
    box.style.top = `${y * 100}%`;
    box.style.width = `${w * 100}%`;
    box.style.height = `${h * 100}%`;
    if (box.dataset.state !== face.state) {
      box.dataset.state = face.state;
      box.querySelector("img").src = icon(iconName);
      box.querySelector(".face-label span").textContent = text(key);
    }
  }
  for (const box of [...layer.children]) if (!seen.has(box.id)) box.remove();
}

// --- prompt and countdown ------------------------------------------------------------------------------------

function renderPrompt(next, capture, faces = []) {
  const bar = $("bar");
  let words = text("door.idle");
  let iconName = "face";
  let code = "";
  if (capture && capture.state === "running") {
    words = `${text("door.capture")} · ${text("door.capture.progress", { done: capture.done, target: capture.target })}`;
    iconName = "enrol";
    code = "capture";
    if (capture.hint && PROMPTS[capture.hint]) words += ` · ${text(PROMPTS[capture.hint][0])}`;
  } else if (next && PROMPTS[next.code]) {
    [words, iconName] = [text(PROMPTS[next.code][0]), PROMPTS[next.code][1]];
    code = next.code;
  } else if (faces.length > 0) {
    // nothing to ask: say what the loop is doing with the (first) face
    const [key, faceIcon] = FACES[faces[0].state] ?? FACES.detected;
    [words, iconName] = [text(key), faceIcon];
    code = `face-${FACES[faces[0].state] ? faces[0].state : "detected"}`;
  }
  prompt = next && PROMPTS[next.code] ? { ...next, at: performance.now() } : null;
  if ($("prompt").textContent !== words) $("prompt").textContent = words;
  if (bar.dataset.prompt !== code) {
    bar.dataset.prompt = code;
    $("prompt-icon").src = icon(iconName);
  }
  tickCountdown();
}

function tickCountdown() {
  const box = $("countdown");
  if (!prompt || prompt.remaining_s == null || !prompt.total_s) {
    box.hidden = true;
    return;
  }
  const left = Math.max(0, prompt.remaining_s - (performance.now() - prompt.at) / 1000);
  const seconds = Math.ceil(left);
  box.hidden = false;
  const shown = text("door.countdown", { seconds });
  if ($("countdown-text").textContent !== shown) {
    $("countdown-text").textContent = shown;
    box.setAttribute("aria-label", text("door.countdown.label", { seconds }));
  }
  $("countdown-fill").style.transform = `scaleX(${Math.min(1, left / prompt.total_s)})`;
}

setInterval(tickCountdown, 100);

// --- results -------------------------------------------------------------------------------------------------

function beep(outcome) {
  if (!cfg.sound) return;
  try {
    audio ??= new AudioContext();
    if (audio.state === "suspended") audio.resume();
    const notes = outcome === "granted" ? [660, 880] : outcome === "denied" ? [330, 220] : [440];
    let at = audio.currentTime;
    for (const hz of notes) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.2, at);
      gain.gain.exponentialRampToValueAtTime(0.001, at + 0.18);
      osc.connect(gain).connect(audio.destination);
      osc.start(at);
      osc.stop(at + 0.2);
      at += 0.2;
    }
  } catch (err) {
    console.warn("door screen: no sound", err);
  }
}

function showResult(result) {
  const [titleKey, detailKey, iconName] = RESULTS[result.outcome] ?? RESULTS.unknown;
  const title = result.outcome === "granted" && result.name
    ? text("door.result.welcome-name", { name: result.name })
    : text(titleKey);
  const detail = text(detailKey);
  shownSeq = result.seq;
  const box = $("result");
  box.dataset.outcome = result.outcome;
  body.dataset.outcome = result.outcome;
  $("result-icon").src = icon(iconName);
  $("result-title").textContent = title;
  $("result-detail").textContent = detail;
  box.hidden = false;
  body.dataset.resultSeq = String(result.seq); // which decision is on screen (tests, the latency tool)
  say(`${title}. ${detail}`);
  beep(result.outcome);
  clearTimeout(resultTimer);
  resultTimer = setTimeout(clearResult, cfg.result_s * 1000);
}

function clearResult() {
  clearTimeout(resultTimer);
  resultTimer = null;
  $("result").hidden = true;
  $("result-title").textContent = "";
  $("result-detail").textContent = "";
  body.dataset.outcome = "";
  say("");
  setView();
}

// --- service -------------------------------------------------------------------------------------------------

function showService(service) {
  const before = body.dataset.service;
  body.dataset.service = service;
  if (service === "ok") {
    $("down").hidden = true;
    if (before !== "ok") say("");
    openPreview();
    return;
  }
  const [titleKey, detailKey, iconName] = SERVICES[service] ?? SERVICES.down;
  closePreview();
  clearResult();
  renderFaces([]);
  body.dataset.service = service;
  $("down-title").textContent = text(titleKey);
  $("down-detail").textContent = text(detailKey);
  $("down-icon").src = icon(iconName);
  $("down").hidden = false;
  if (before !== service) say(`${text(titleKey)}. ${text(detailKey)}`);
}

export function apply(state) {
  const service = state.service === "ok" ? "ok" : (SERVICES[state.service] ? state.service : "down");
  showService(service);
  if (service === "ok") {
    const faces = Array.isArray(state.faces) ? state.faces : [];
    renderFaces(faces);
    renderPrompt(state.prompt ?? null, state.capture ?? null, faces);
    if (state.result && state.result.seq !== shownSeq) showResult(state.result);
  } else {
    renderPrompt(null, null);
  }
  setView();
}

// --- the state stream ----------------------------------------------------------------------------------------

function connect() {
  const source = new EventSource(cfg.state_url);
  source.addEventListener("message", (event) => {
    let state;
    try {
      state = JSON.parse(event.data);
    } catch {
      return;
    }
    apply(state);
  });
  source.addEventListener("error", () => {
    // the web process is gone or restarting: the browser retries (the server's retry: hint); say so meanwhile
    apply({ v: 1, service: "down", faces: [], prompt: null, result: null });
    closePreview();
  });
  source.addEventListener("open", () => {
    previewOpen = false; // a fresh connection: reopen the preview stream with the next "ok" state
  });
}

connect();
