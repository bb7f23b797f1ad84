// Headless Chromium with WebGPU (docs: platform.md), and a static server on 127.0.0.1 (WebGPU needs a secure
// context; localhost counts). Shared by the browser checks.
import { chromium } from 'playwright-core';
import http from 'node:http';

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
