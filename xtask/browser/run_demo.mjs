// Runs the web demo (wasm/www + its wasm-bindgen build) in headless Chromium on WebGPU and checks it against
// the native example's run of the same configuration: same seeds and batches, so the losses agree up to float
// rounding (different adapters and kernel variants sum in different orders). Then the page's checkpoint round
// trip: stop a run early, download its checkpoint, continue from the file; the continued steps must match too.
// Usage: node run_demo.mjs WEB_DIR DATA_FILE NATIVE_LOSS_CSV QUERY [SCREENSHOT]
import fs from 'node:fs';
import path from 'node:path';
import { launch, serveDemo } from './chromium.mjs';

// Largest loss difference tolerated at any step. Rounding differences grow slowly through training (measured:
// 1.1e-5 over 40 tiny AdamW steps, SwiftShader against lavapipe); another seed moves them by 0.05 to 0.4.
const TOLERANCE = 1e-3;

const [webDir, dataFile, nativeCsv, query, screenshot] = process.argv.slice(2);
const server = await serveDemo(webDir, dataFile);

const native = { train: new Map(), val: new Map() };
for (const line of fs.readFileSync(nativeCsv, 'utf8').trim().split('\n').slice(1)) {
  const [step, train, val] = line.split(',');
  native.train.set(Number(step), Number(train));
  if (val) native.val.set(Number(step), Number(val));
}

// What the page's last run left: its result, or its error.
const outcome = (page) => page.evaluate(() => ({ result: window.wgoptimResult, error: window.wgoptimError }));

// Stop a fresh run of the page's form (the same configuration) early, save its checkpoint through the download
// button, continue from that file through the file input; returns the continued run's result.
async function roundTrip(page, iters) {
  await page.goto(`${server.base}/index.html?${query.replace(/(^|&)auto=1/, '')}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 60000 });
  // Press stop from the page the moment the first steps are reported: a click sent from here after seeing them
  // raced the run, which on a fast machine finished all its steps first. The observer's microtask runs once the
  // loop awaits its next chunk, so the run stops after that chunk: step 20 of 40 with chunks of 10.
  await page.evaluate(() => {
    const progress = document.getElementById('progress');
    new MutationObserver((_, observer) => {
      if (!/^step [1-9]/.test(progress.textContent)) return;
      observer.disconnect();
      document.getElementById('stop').click();
    }).observe(progress, { childList: true, characterData: true, subtree: true });
  });
  await page.click('#start');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null,
    { timeout: 10 * 60 * 1000, polling: 500 });
  const stopped = await outcome(page);
  if (stopped.error) throw new Error(`the run to stop failed: ${stopped.error}`);
  const stoppedAt = stopped.result && stopped.result.steps;
  if (!(stoppedAt > 0 && stoppedAt < iters)) throw new Error(`stop did not stop the run early (steps: ${stoppedAt})`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#save')]);
  const file = path.join(path.resolve(webDir), 'checkpoint.safetensors');
  await download.saveAs(file);
  await page.setInputFiles('#resume', file);
  await page.waitForFunction(() => document.body.dataset.state === 'running', null, { timeout: 60000 });
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null,
    { timeout: 20 * 60 * 1000, polling: 500 });
  const r = await outcome(page);
  if (r.error) throw new Error(`continuing from the checkpoint failed: ${r.error}`);
  if (r.result.train[0][0] !== stoppedAt || r.result.steps !== iters) {
    throw new Error(`the continued run covers steps ${r.result.train[0][0]}..${r.result.steps - 1}, not ${stoppedAt}..${iters - 1}`);
  }
  return { ...r.result, stoppedAt };
}

const browser = await launch();
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 1100 }, acceptDownloads: true });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  const t0 = Date.now();
  await page.goto(`${server.base}/index.html?${query}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null,
    { timeout: 20 * 60 * 1000, polling: 500 });
  const r = await outcome(page);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  if (r.error) throw new Error(`the page failed: ${r.error}`);
  const res = r.result;
  const worst = (pairs, reference, what) => {
    let max = 0;
    for (const [s, l] of pairs) {
      if (!reference.has(s)) throw new Error(`native run has no ${what} loss at step ${s}`);
      max = Math.max(max, Math.abs(l - reference.get(s)));
    }
    return max;
  };
  if (res.train.length !== native.train.size) {
    problems.push(`browser trained ${res.train.length} steps, native ${native.train.size}`);
  }
  if (res.val.length !== native.val.size) {
    problems.push(`browser has ${res.val.length} validation losses, native ${native.val.size}`);
  }
  const dTrain = worst(res.train, native.train, 'training');
  const dVal = worst(res.val, native.val, 'validation');
  if (!(dTrain <= TOLERANCE && dVal <= TOLERANCE)) {
    problems.push(`losses differ from the native run by up to ${dTrain.toExponential(2)} (train) / ` +
      `${dVal.toExponential(2)} (val); tolerance ${TOLERANCE}`);
  }
  const resumed = await roundTrip(page, res.steps);
  const dResumed = worst(resumed.train, native.train, 'training');
  if (!(dResumed <= TOLERANCE)) problems.push(`the continued run differs from native by ${dResumed}`);
  const sampleLen = Number(new URLSearchParams(query).get('sample') ?? 0);
  if ([...res.sample].length !== sampleLen) problems.push(`sample has ${[...res.sample].length} characters, expected ${sampleLen}`);
  const [first, last] = [res.train[0][1], res.train[res.train.length - 1][1]];
  const lastVal = res.val[res.val.length - 1][1];
  console.log(`web demo (Chromium WebGPU, ${res.adapter}): ${res.optimizer} on the ${res.preset} preset, ` +
    `${res.steps} steps, loss ${first.toFixed(3)} → ${last.toFixed(3)}, val ${lastVal.toFixed(3)}, ` +
    `${res.msPerStep.toFixed(0)} ms/step, ${((Date.now() - t0) / 1000).toFixed(0)} s in all; ` +
    `max |Δ| against native ${dTrain.toExponential(1)} (train), ${dVal.toExponential(1)} (val); stopped at ` +
    `step ${resumed.stoppedAt}, continued from the downloaded checkpoint: |Δ| ${dResumed.toExponential(1)}`);
} catch (e) {
  problems.push(e.message);
} finally {
  await browser.close();
  server.close();
}
for (const p of problems) console.error(p);
process.exit(problems.length ? 1 : 0);
