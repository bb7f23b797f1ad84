// Compiles every WGSL file of a directory (the kernels a native run specialized, dumped with WGOPTIM_DUMP_WGSL)
// with the browser's WebGPU — Chromium's Tint, stricter than naga in places (uniformity, constant NaNs) — and
// builds its compute pipeline on a device with the adapter's limits; fails on any error. Usage: node check_wgsl.mjs DIR [CHROMIUM]
import fs from 'node:fs';
import path from 'node:path';
import { launch, serve } from './chromium.mjs';

const [dir, executablePath = '/usr/bin/chromium'] = process.argv.slice(2);
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.wgsl')).sort();
if (files.length === 0) {
  console.error(`no .wgsl files in ${dir}: run the native suite with WGOPTIM_DUMP_WGSL=${dir} first`);
  process.exit(1);
}
const sources = files.map((f) => fs.readFileSync(path.join(dir, f), 'utf8'));

// WebGPU needs a secure context: a blank page served on 127.0.0.1.
const server = await serve(() => ({ type: 'text/html', body: '<!doctype html><title>wgoptim WGSL check</title>' }));
const browser = await launch(executablePath);
let code = 1;
try {
  const page = await browser.newPage();
  await page.goto(`${server.base}/`, { waitUntil: 'domcontentloaded' });
  const r = await page.evaluate(async (sources) => {
    if (!navigator.gpu) return { error: 'navigator.gpu is missing (WebGPU disabled?)' };
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { error: 'requestAdapter() returned null' };
    const subgroups = adapter.features.has('subgroups');
    // As wgoptim does: the adapter's own limits, not WebGPU's defaults.
    const requiredLimits = {};
    for (const k in adapter.limits) requiredLimits[k] = adapter.limits[k];
    const device = await adapter.requestDevice({ requiredFeatures: subgroups ? ['subgroups'] : [], requiredLimits });
    const info = adapter.info || {};
    const unchecked = [];
    const check = async (i) => {
      let code = sources[i];
      const entryPoint = (code.match(/^\/\/ wgoptim entry point: (\S+)/) || [])[1] || 'main';
      // wgoptim picks its subgroup variants on CPU adapters only; naga cannot parse the `enable subgroups;`
      // that Tint requires, so the directive is added here.
      if (/\bsubgroup[A-Z_a-z]/.test(code)) {
        if (!subgroups) { unchecked.push(i); return null; }
        code = 'enable subgroups;\n' + code;
      }
      const module = device.createShaderModule({ code });
      const ci = await module.getCompilationInfo();
      const errors = ci.messages.filter((x) => x.type === 'error').map((x) => `${x.lineNum}:${x.linePos} ${x.message}`);
      if (errors.length) return { i, errors };
      // The pipeline too: entry point, bindings against the device's limits, workgroup size and memory.
      device.pushErrorScope('validation');
      try {
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint } });
      } catch (e) {
        errors.push(`pipeline ${entryPoint}: ${e.message}`);
      }
      const scoped = await device.popErrorScope();
      if (scoped) errors.push(`pipeline ${entryPoint}: ${scoped.message}`);
      return errors.length ? { i, errors } : null;
    };
    const failures = (await Promise.all(sources.map((_, i) => check(i)))).filter((f) => f);
    return { adapter: `${info.vendor || '?'} ${info.architecture || ''} ${info.description || ''}`.trim(), subgroups, failures, unchecked };
  }, sources);
  if (r.error) {
    console.error(`browser WGSL check: ${r.error}`);
  } else {
    for (const f of r.failures) {
      console.log(`${path.join(dir, files[f.i])}:\n  ${f.errors.join('\n  ')}`);
    }
    const un = r.unchecked.length ? `; ${r.unchecked.length} subgroup variants not checked (the adapter has no subgroups)` : '';
    console.log(`browser WGSL check (Chromium WebGPU, adapter: ${r.adapter}): ${files.length - r.failures.length - r.unchecked.length} of ${files.length} kernel sources compile into pipelines, ${r.failures.length} fail${un}`);
    code = r.failures.length ? 1 : 0;
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
