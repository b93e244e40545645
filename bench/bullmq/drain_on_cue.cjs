// BullMQ's side of `python -m bench.redis_cost`: fill a queue with BENCH_JOBS no-op jobs,
// print `filled`, wait for a line on stdin (the bench zeroes Redis's instruction counters
// then), drain it with one Worker (concurrency 200), print `drained`.
'use strict';
const { Queue, Worker } = require('bullmq');

const connection = { host: '127.0.0.1', port: Number(process.env.BENCH_REDIS_PORT) };
const jobs = Number(process.env.BENCH_JOBS || 2000);

(async () => {
  const queue = new Queue('cost', { connection });
  for (let i = 0; i < jobs; i += 500) {
    const n = Math.min(500, jobs - i);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
  }
  console.log('filled');
  await new Promise((resolve) => process.stdin.once('data', resolve));
  let done = 0;
  await new Promise((resolve, reject) => {
    const worker = new Worker('cost', async () => {}, { connection, concurrency: 200 });
    worker.on('error', reject);
    worker.on('completed', () => {
      done += 1;
      if (done === jobs) worker.close().then(resolve, reject);
    });
  });
  await queue.close();
  console.log('drained');
  process.exit(0);
})();
