/** A line for an operator on stderr, after an ISO timestamp: how the roles report what happened to them. */
export function logLine(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}
