/**
 * Benchmark runner: `npm run bench -- [name ...]` runs the named benchmarks (default: all that
 * exist) one after another, and writes each result with the machine's facts to
 * `benchmarks/results/<name>.json`. The README's tables are copied from those files.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

type BenchmarkModule = { run: (args: string[]) => Promise<Record<string, unknown>> };

const HERE = dirname(fileURLToPath(import.meta.url));
const KNOWN = ['identity', 'tunnel', 'carrier', 'xds', 'control', 'sovereign'];

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const names = args.filter((a) => !a.startsWith('-'));
  const selected = (names.length > 0 ? names : KNOWN).filter((name) => {
    const present = existsSync(join(HERE, `${name}.ts`));
    if (!present) process.stderr.write(`skipping ${name}: benchmarks/${name}.ts does not exist yet\n`);
    return present;
  });
  await mkdir(join(HERE, 'results'), { recursive: true });
  for (const name of selected) {
    const module = (await import(pathToFileURL(join(HERE, `${name}.ts`)).href)) as BenchmarkModule;
    process.stderr.write(`running ${name}...\n`);
    const started = new Date();
    const results = await module.run(args.filter((a) => a.startsWith('-')));
    const record = {
      benchmark: name,
      date: started.toISOString(),
      durationMs: Date.now() - started.getTime(),
      machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30) },
      results,
    };
    await writeFile(join(HERE, 'results', `${name}.json`), `${JSON.stringify(record, null, 2)}\n`);
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
  }
}

await main();
