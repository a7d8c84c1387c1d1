// Worker entry of the serving engine. The sources are TypeScript and a worker thread does not get
// the main thread's tsx loader (neither one registered at run time by cascade/bin.mjs nor, on
// Node 20, one from --import), so it registers tsx for itself.
import { register } from 'tsx/esm/api';

register();
await import('./engine-worker.ts');
