#!/usr/bin/env node
// The sources are TypeScript run as they are (no build step to forget): tsx registers the loader.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../shared/cli/main.ts');
// The stage functions are wired in here: shared/ never imports functions/ (DESIGN §2).
const { stageFunctions, subscriberFunctions, ingestFunction } = await import('../functions/index.ts');
process.exitCode = await runCli(process.argv.slice(2), { stages: stageFunctions, subscribers: subscriberFunctions, ingest: ingestFunction });
