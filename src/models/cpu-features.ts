import { readFileSync } from 'node:fs';

/**
 * Whether this CPU has the int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI) that MLAS's
 * int8 GEMMs use, from /proc/cpuinfo; undefined where that cannot be read (not Linux). Where they
 * are missing, ONNX Runtime's uint8 x int8 GEMM adds products in pairs into 16 bits
 * (ort-worker.ts, SESSION_CONFIG), and its one-row int8 kernel rounds as its several-row one does.
 */
export function hasVnni(): boolean | undefined {
  try {
    return /\b(avx512_vnni|avx_vnni)\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return undefined;
  }
}
