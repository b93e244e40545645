// BullMQ's enqueue, for `python -m bench.bullmq`'s enqueue phase: BENCH_JOBS no-op jobs
// added one by one (`queue.add`, one in flight), then as many with `addBulk`, 1,000 a call,
// one call at a time and then two calls in flight.
// Prints one line: bullmq_add_per_s=N bullmq_addbulk_per_s=M bullmq_addbulk2_per_s=K
'use strict';
const { Queue } = require('bullmq');

const connection = { host: '127.0.0.1', port: Number(process.env.BENCH_REDIS_PORT) };
const jobs = Number(process.env.BENCH_JOBS || 20000);

(async () => {
  const queue = new Queue(`enqueue-${Date.now()}`, { connection });
  await queue.waitUntilReady();
  let started = process.hrtime.bigint();
  for (let i = 0; i < jobs; i += 1) await queue.add('noop', { n: 1 });
  const one = jobs / (Number(process.hrtime.bigint() - started) / 1e9);
  started = process.hrtime.bigint();
  for (let i = 0; i < jobs; i += 1000) {
    const n = Math.min(1000, jobs - i);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: { n: 1 } })));
  }
  const bulk = jobs / (Number(process.hrtime.bigint() - started) / 1e9);
  let taken = 0;
  const lane = async () => {
    while (taken < jobs) {
      const n = Math.min(1000, jobs - taken);
      taken += n;
      await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: { n: 1 } })));
    }
  };
  started = process.hrtime.bigint();
  await Promise.all([lane(), lane()]);
  const bulk2 = jobs / (Number(process.hrtime.bigint() - started) / 1e9);
  await queue.close();
  console.log(`bullmq_add_per_s=${Math.round(one)} bullmq_addbulk_per_s=${Math.round(bulk)} ` +
    `bullmq_addbulk2_per_s=${Math.round(bulk2)}`);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
