// Every optimizer wgoptim has trains a few steps of the tiny GPT in headless Chromium (the web demo's
// WebTrainer on WebGPU): each run's losses must be finite and fall. Usage: node every_optimizer.mjs WEB_DIR DATA_FILE
import { launch, serveDemo } from './chromium.mjs';

const STEPS = 3;
const [webDir, dataFile] = process.argv.slice(2);
const server = await serveDemo(webDir, dataFile);
const browser = await launch();
const failures = [];
let count = 0;
const t0 = Date.now();
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  // The module gets the page's device; each run is reported as it ends (a log, and progress for slow adapters).
  page.on('console', (m) => m.text().startsWith('wgoptim-run ') && console.log(m.text().slice(12)));
  await page.goto(`${server.base}/index.html`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: 120000 });
  const runs = await page.evaluate(async (steps) => {
    const m = await import('./pkg/wgoptim_wasm.js');
    const text = await (await fetch('tinyshakespeare.txt')).text();
    const out = [];
    for (const name of m.optimizer_names()) {
      const start = performance.now();
      let run;
      try {
        const trainer = await m.WebTrainer.create(text, 'tiny', name, 1337, steps);
        run = { name, losses: (await trainer.train(steps)).map((p) => p[1]) };
        trainer.free();
      } catch (e) {
        run = { name, error: e.message };
      }
      run.ms = performance.now() - start;
      console.log(`wgoptim-run ${name}: ${run.error ?? run.losses.map((l) => l.toFixed(4)).join(' → ')} (${(run.ms / 1000).toFixed(1)} s)`);
      out.push(run);
    }
    return out;
  }, STEPS);
  count = runs.length;
  for (const r of runs) {
    if (r.error) failures.push(`${r.name}: ${r.error}`);
    else if (r.losses.length !== STEPS || !r.losses.every(Number.isFinite)) failures.push(`${r.name}: losses ${r.losses}`);
    else if (!(r.losses[STEPS - 1] < r.losses[0])) failures.push(`${r.name}: the loss did not fall (${r.losses})`);
  }
} catch (e) {
  failures.push(e.message);
} finally {
  await browser.close();
  server.close();
}
for (const f of failures) console.error(f);
console.log(`every optimizer in Chromium: ${count - failures.length} of ${count} train ${STEPS} steps with falling, ` +
  `finite losses (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
process.exit(failures.length || count === 0 ? 1 : 0);
