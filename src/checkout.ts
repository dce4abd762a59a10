import { fileURLToPath } from 'node:url';

/**
 * The checkout's root folder (where models/, bench/ and tools/ are), whether this code runs from the
 * TypeScript sources (src/, under tsx) or compiled by tsc (dist/src/).
 */
export const ROOT = fileURLToPath(new URL(import.meta.url.endsWith('.js') ? '../..' : '..', import.meta.url));
