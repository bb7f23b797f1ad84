// Headless Chromium with WebGPU (docs: platform.md), and a static server on 127.0.0.1 (WebGPU needs a secure
// context; localhost counts). Shared by the browser checks.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

export async function launch(executablePath = '/usr/bin/chromium') {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
  });
}

// Serve `respond(urlPath) → {type, body} | null` (null: 404); resolves to the server with its base URL.
export async function serve(respond) {
  const server = http.createServer((req, res) => {
    const found = respond(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    if (!found) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': found.type, 'cache-control': 'no-store' });
    res.end(found.body);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  server.base = `http://127.0.0.1:${server.address().port}`;
  return server;
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.txt': 'text/plain' };

// Serve the built web demo (WEB_DIR, nothing outside it) with Tiny Shakespeare beside the page.
export async function serveDemo(webDir, dataFile) {
  const root = path.resolve(webDir);
  return serve((p) => {
    const file = p === '/tinyshakespeare.txt' ? dataFile : path.join(root, p);
    if (file !== dataFile && !file.startsWith(root + path.sep)) return null;
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) return null;
    return { type: TYPES[path.extname(file)] || 'application/octet-stream', body: fs.readFileSync(file) };
  });
}
