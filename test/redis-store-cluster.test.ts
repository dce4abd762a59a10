/**
 * test/redis-store.test.ts's cases (the RequestLog contract, released KV, a BullMQ stall hand-over,
 * ADORE spilling to Redis) against a real three-master Redis Cluster with a replica per master.
 */
process.env.CASCADE_TEST_REDIS = 'cluster';
await import('./redis-store.test.ts');
