// Validates an AsyncAPI document with the AsyncAPI project's own parser
// (npm @asyncapi/parser, installed under .tools/asyncapi by
// `deploy/local/tools.sh asyncapi`): the JSON Schema of the spec version,
// reference resolution and the parser's Spectral rules. Diagnostics of
// severity 0 (errors) fail the check; the others are listed.
//
// Usage: node deploy/local/asyncapi-check.mjs FILE | URL | -
//        (- reads stdin; a URL is fetched, e.g. the relay's
//        http://127.0.0.1:9100/asyncapi.json)
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, '.tools', 'asyncapi', 'package.json'));
let Parser;
try {
  ({ Parser } = require('@asyncapi/parser'));
} catch (err) {
  console.error(`error: @asyncapi/parser is not installed (run deploy/local/tools.sh asyncapi): ${err.message}`);
  process.exit(2);
}

const source = process.argv[2];
if (!source) {
  console.error('usage: node deploy/local/asyncapi-check.mjs FILE | URL | -');
  process.exit(2);
}

async function read(what) {
  if (what === '-') return readFileSync(0, 'utf8');
  if (/^https?:\/\//.test(what)) {
    const response = await fetch(what, { signal: AbortSignal.timeout(10_000) });
    if (!response.ok) throw new Error(`GET ${what}: HTTP ${response.status}`);
    return response.text();
  }
  return readFileSync(what, 'utf8');
}

const severities = ['error', 'warning', 'info', 'hint'];
const text = await read(source);
const { document, diagnostics } = await new Parser().parse(text);
for (const d of diagnostics) {
  const at = d.path && d.path.length ? ` at /${d.path.join('/')}` : '';
  console.log(`${severities[d.severity] ?? d.severity}: ${d.code}: ${d.message}${at}`);
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
if (errors > 0 || !document) {
  console.error(`${source}: not a valid AsyncAPI document (${errors} error(s))`);
  process.exit(1);
}
const channels = [...document.channels()].map((c) => c.address());
console.log(
  `${source}: valid AsyncAPI ${document.version()}, ${channels.length} channel(s): ${channels.join(', ')}; ` +
    `${diagnostics.length} other diagnostic(s)`,
);
