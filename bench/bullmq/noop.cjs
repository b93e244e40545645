// BullMQ doing bench.engine's no-op jobs: `python -m bench.bullmq` runs this against its own
// redis-server. Throughput: fill the queue, then one Worker drains it; the rate is jobs over
// the span from the first start to the last finish, from the jobs' own timestamps. Pickup:
// with an idle worker, jobs are added one at a time; latency is start time minus add time.
// Prints one line: bullmq_jobs_per_s=N pickup_p50_ms=A pickup_p99_ms=B
'use strict';
const { Queue, Worker, QueueEvents } = require('bullmq');

const connection = { host: '127.0.0.1', port: Number(process.env.BENCH_REDIS_PORT) };
const jobs = Number(process.env.BENCH_JOBS || 20000);
const concurrency = Number(process.env.BENCH_CONCURRENCY || 200);
const pickupJobs = Number(process.env.BENCH_PICKUP_JOBS || 300);

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.round((q / 100) * (sorted.length - 1)))];
}

async function throughput(name) {
  const queue = new Queue(name, { connection });
  for (let i = 0; i < jobs; i += 1000) {
    const n = Math.min(1000, jobs - i);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
  }
  let done = 0;
  let first = Infinity;
  let last = 0;
  await new Promise((resolve, reject) => {
    const worker = new Worker(name, async () => {}, { connection, concurrency });
    worker.on('error', reject);
    worker.on('completed', (job) => {
      first = Math.min(first, job.processedOn);
      last = Math.max(last, job.finishedOn);
      done += 1;
      if (done === jobs) worker.close().then(resolve, reject);
    });
  });
  await queue.close();
  return jobs / (Math.max(1, last - first) / 1000);
}

async function pickup(name) {
  const queue = new Queue(name, { connection });
  const events = new QueueEvents(name, { connection });
  const worker = new Worker(name, async (job) => job.processedOn - job.timestamp, { connection });
  await Promise.all([events.waitUntilReady(), worker.waitUntilReady()]);
  const latencies = [];
  for (let i = 0; i < pickupJobs; i += 1) {
    const job = await queue.add('noop', {});
    latencies.push(await job.waitUntilFinished(events, 30000));
    await new Promise((r) => setTimeout(r, 5)); // pacing between adds, as bench.engine
  }
  await Promise.all([worker.close(), events.close(), queue.close()]);
  return latencies.sort((a, b) => a - b);
}

(async () => {
  const rate = await throughput(`bench-${Date.now()}`);
  const lat = await pickup(`pickup-${Date.now()}`);
  console.log(
    `bullmq_jobs_per_s=${Math.round(rate)} pickup_p50_ms=${percentile(lat, 50)} ` +
      `pickup_p99_ms=${percentile(lat, 99)}`,
  );
  process.exit(0);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
