import type { ServerResponse } from 'node:http';

/**
 * A streamed answer as server-sent events, OpenAI's way: each event a `data: <json>` line, the last
 * one `data: [DONE]`. Once `closed` (the client went away) nothing more is written.
 */
export class EventStream {
  closed = false;
  readonly #raw: ServerResponse;
  /** Events written before open(), sent after its first ones (tokens may arrive before the headers go out). */
  #early: string[] | undefined = [];

  constructor(raw: ServerResponse) {
    this.#raw = raw;
  }

  /** Sends the 200, the event-stream headers and `first` (the role, the echo), then what was written before. */
  open(first: readonly unknown[] = []): void {
    this.#raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const early = this.#early ?? [];
    this.#early = undefined;
    for (const event of first) this.write(event);
    for (const line of early) if (!this.closed) this.#raw.write(line);
  }

  write(event: unknown): void {
    const line = `data: ${JSON.stringify(event)}\n\n`;
    if (this.#early) this.#early.push(line);
    else if (!this.closed) this.#raw.write(line);
  }

  /** Ends the stream with `data: [DONE]`; nothing is written after it. */
  done(): void {
    if (!this.closed) this.#raw.end('data: [DONE]\n\n');
    this.closed = true;
  }
}
