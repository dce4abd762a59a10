import { OrtModelSession } from '../../src/models/ort-session.ts';
for (const dir of process.argv.slice(2)) {
  const s = await OrtModelSession.open(dir, { intraOpThreads: 1, prefixCache: false });
  const prompt = Array.from({ length: 256 }, (_, i) => (i * 37 + 11) % 2000 + 5);
  const out: string[] = [];
  for (const rep of [0, 1, 2]) for (const rows of [1, 2, 3]) {
    const id = `s${rep}${rows}`;
    await s.forward({ seqId: id, inputIds: prompt }, 'last');
    const t0 = performance.now();
    const N = 100;
    for (let i = 0; i < N; i++) {
      const L = s.length(id);
      await s.forward({ seqId: id, inputIds: Array(rows).fill(300 + (i % 50)) }, 'last');
      if (rows > 1) await s.truncate(id, L + 1);
    }
    out.push(`rows=${rows} ${((performance.now() - t0) / N).toFixed(2)}ms`);
    await s.release(id);
  }
  console.log(dir, out.join(' '));
  await s.close();
}
