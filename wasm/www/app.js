// The demo page: finds Tiny Shakespeare, drives wgoptim's WebTrainer, plots every run's curves.
// URL parameters (links and tests): optimizer, preset, iters, seed preset the form; auto=1 starts a run at once;
// eval_interval and eval_iters change the validation cadence; sample=N characters generated at the end.
// A finished run is left in window.wgoptimResult and sets <body data-state="done">; a failure sets "error".
import init, { WebTrainer, describe_gpu, optimizer_names, tiny_shakespeare_sha256, tiny_shakespeare_url }
  from './pkg/wgoptim_wasm.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
const curves = [];
let text = null;
let trainer = null;
let stopping = false;

function setState(state) {
  document.body.dataset.state = state;
}

function fail(e) {
  const message = e instanceof Error ? e.message : String(e);
  $('error').textContent = message;
  window.wgoptimError = message;
  setState('error');
  $('start').disabled = text === null;
  $('stop').disabled = true;
}

async function sha256hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

// The standard file, with a progress bar and its sha256 checked.
async function download() {
  const url = tiny_shakespeare_url();
  const res = await fetch(url);
  if (!res.ok) throw new Error(`download failed: HTTP ${res.status} from ${url}`);
  const bar = $('data-progress');
  bar.hidden = false;
  bar.max = Number(res.headers.get('content-length')) || 1115394;
  const reader = res.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    bar.max = Math.max(bar.max, received);
    bar.value = received;
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  const digest = await sha256hex(bytes);
  if (digest !== tiny_shakespeare_sha256()) {
    throw new Error(`the download's sha256 is ${digest}, expected ${tiny_shakespeare_sha256()}`);
  }
  bar.hidden = true;
  return new TextDecoder().decode(bytes);
}

function useText(t, source) {
  $('resume').disabled = false;
  text = t;
  const vocab = new Set(t).size;
  $('data-status').textContent = `${t.length.toLocaleString()} characters, ${vocab} distinct (${source})`;
  $('data-actions').hidden = true;
  $('start').disabled = false;
}

// A copy served beside the page is used as is; otherwise the user downloads or opens it.
async function findText() {
  try {
    const res = await fetch('tinyshakespeare.txt');
    if (res.ok) return useText(await res.text(), 'served with this page');
  } catch (_) { /* not served: offer the download */ }
  $('data-status').textContent = 'not found beside this page.';
  $('data-actions').hidden = false;
}

// A centred moving average over about 1 % of the run (none for short runs): readable without lagging.
function smooth(points) {
  const k = Math.round(points.length / 200);
  return points.map(([s], i) => {
    const window = points.slice(Math.max(0, i - k), i + k + 1);
    return [s, window.reduce((sum, p) => sum + p[1], 0) / window.length];
  });
}

// What the browser says about its adapter (wgpu gets only the description, which browsers often leave empty).
async function adapterLabel() {
  const adapter = await navigator.gpu.requestAdapter();
  const info = (adapter && adapter.info) || {};
  const label = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
  return `${label || 'unnamed'}${(info.isFallbackAdapter ?? (adapter && adapter.isFallbackAdapter)) ? ', software fallback' : ''}`;
}

function draw() {
  const canvas = $('plot');
  const dpr = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * dpr;
  canvas.height = canvas.clientHeight * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  const [w, h, left, bottom] = [canvas.clientWidth, canvas.clientHeight, 48, 24];
  const all = curves.flatMap((c) => [...smooth(c.train), ...c.val]);
  if (all.length === 0) return;
  const maxStep = Math.max(...all.map((p) => p[0]), 1);
  const lo = Math.min(...all.map((p) => p[1]));
  const hi = Math.min(Math.max(...all.map((p) => p[1])), lo + 4);
  const x = (s) => left + (s / maxStep) * (w - left - 10);
  const y = (l) => 10 + (1 - (Math.min(l, hi) - lo) / Math.max(hi - lo, 1e-3)) * (h - bottom - 10);
  g.font = '11px system-ui';
  g.fillStyle = '#666';
  g.strokeStyle = '#eee';
  for (let i = 0; i <= 4; i++) {
    const l = lo + ((hi - lo) * i) / 4;
    g.beginPath();
    g.moveTo(left, y(l));
    g.lineTo(w - 10, y(l));
    g.stroke();
    g.fillText(l.toFixed(2), 4, y(l) + 4);
  }
  g.fillText(`step ${maxStep}`, w - 70, h - 6);
  curves.forEach((c, i) => {
    g.strokeStyle = g.fillStyle = c.color;
    g.beginPath();
    smooth(c.train).forEach(([s, l], j) => (j ? g.lineTo(x(s), y(l)) : g.moveTo(x(s), y(l))));
    g.stroke();
    for (const [s, l] of c.val) {
      g.beginPath();
      g.arc(x(s), y(l), 3, 0, 2 * Math.PI);
      g.fill();
    }
    g.fillText(c.name, left + 8, 20 + 14 * i);
  });
}

function formConfig() {
  const iters = $('iters').value ? Number($('iters').value) : undefined;
  return { optimizer: $('optimizer').value, preset: $('preset').value, iters, seed: Number($('seed').value) };
}

// Train with the form's configuration, from a fresh initialization or from a checkpoint (safetensors bytes).
async function run(checkpoint) {
  const cfg = formConfig();
  stopping = false;
  $('error').textContent = '';
  $('start').disabled = true;
  $('save').disabled = true;
  $('progress').textContent = 'building the training plan (first use compiles the kernels)…';
  setState('running');
  if (trainer) trainer.free();
  trainer = null;
  trainer = await WebTrainer.create(text, cfg.preset, cfg.optimizer, cfg.seed, cfg.iters);
  if (checkpoint) await trainer.load(checkpoint);
  const start = trainer.steps();
  $('stop').disabled = false;
  const every = Number(params.get('eval_interval')) || trainer.eval_interval;
  const evalIters = Number(params.get('eval_iters')) || trainer.eval_iters;
  const curve = { name: `${cfg.optimizer}, ${cfg.preset}, seed ${cfg.seed}`, train: [], val: [] };
  curve.color = COLORS[curves.length % COLORS.length];
  curves.push(curve);
  const iters = trainer.iters;
  let trainMs = 0;
  let val = NaN;
  while (trainer.steps() < iters && !stopping) {
    const done = trainer.steps();
    const n = Math.min(10, iters - done, every - (done % every));
    const t0 = performance.now();
    const losses = await trainer.train(n);
    trainMs += performance.now() - t0;
    for (const [s, l] of losses) {
      if (!Number.isFinite(l)) throw new Error(`the training loss became ${l} at step ${s}; try a lower learning rate`);
      curve.train.push([s, l]);
    }
    const now = trainer.steps();
    if (now % every === 0 || now === iters) {
      val = await trainer.evaluate('val', evalIters);
      curve.val.push([now - 1, val]);
    }
    const last = curve.train[curve.train.length - 1][1];
    const tps = ((now - start) * trainer.tokens_per_step * 1000) / trainMs;
    $('progress').textContent = `step ${now}/${iters}: loss ${last.toFixed(4)}, val ${val.toFixed(4)}, ` +
      `${tps.toFixed(0)} tokens/s, ${(trainMs / (now - start)).toFixed(1)} ms/step`;
    draw();
  }
  $('stop').disabled = true;
  const chars = params.has('sample') ? Number(params.get('sample')) : 500;
  $('sample').textContent = 'sampling…';
  const sample = chars > 0 ? await trainer.sample('', chars, 0.8, 200, cfg.seed) : '';
  $('sample').textContent = sample;
  $('sample').classList.remove('muted');
  window.wgoptimResult = {
    adapter: $('gpu').textContent,
    ...cfg,
    steps: trainer.steps(),
    parameters: trainer.parameters,
    train: curve.train,
    val: curve.val,
    sample,
    msPerStep: trainMs / Math.max(trainer.steps() - start, 1),
  };
  $('start').disabled = false;
  $('save').disabled = false;
  setState('done');
}

async function saveCheckpoint() {
  const bytes = await trainer.save();
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  link.download = 'checkpoint.safetensors';
  link.click();
  URL.revokeObjectURL(link.href);
}

async function main() {
  await init();
  if (!navigator.gpu) {
    throw new Error('This browser has no WebGPU. Use a recent Chrome or Edge, Safari 26+, or Firefox 141+ ' +
      '(on Linux Chrome may need chrome://flags/#enable-unsafe-webgpu).');
  }
  const gpu = `${await adapterLabel()} — wgoptim: ${await describe_gpu()}`;
  $('gpu').textContent = gpu;
  for (const name of optimizer_names()) $('optimizer').add(new Option(name, name));
  for (const key of ['optimizer', 'preset', 'iters', 'seed']) {
    if (params.has(key)) $(key).value = params.get(key);
  }
  $('start').onclick = () => run().catch(fail);
  $('resume').onchange = async (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (f) run(new Uint8Array(await f.arrayBuffer())).catch(fail);
  };
  $('stop').onclick = () => { stopping = true; };
  $('save').onclick = () => saveCheckpoint().catch(fail);
  $('download').onclick = () => download().then((t) => useText(t, 'downloaded')).catch(fail);
  $('file').onchange = async (e) => {
    const f = e.target.files[0];
    if (f) useText(await f.text(), f.name);
  };
  await findText();
  setState('ready');
  if (params.get('auto') === '1') {
    if (text === null) throw new Error('auto=1 needs tinyshakespeare.txt served beside the page');
    await run();
  }
}

main().catch(fail);
