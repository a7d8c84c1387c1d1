#!/usr/bin/env node
// The `cascade` executable. Sources are TypeScript, run through tsx's loader, so the CLI, the
// services and the tests all execute the same files (no build step, no stale dist/).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
