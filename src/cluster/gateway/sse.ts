import type { ServerResponse } from 'node:http';

/**
 * A streamed answer as server-sent events, OpenAI's way: each event a `data: <json>` line, the last
 * one `data: [DONE]`. Once `closed` (the client went away) nothing more is written.
 */
export class EventStream {
  closed = false;
  readonly #raw: ServerResponse;

  constructor(raw: ServerResponse) {
    this.#raw = raw;
  }

  /** Sends the 200 and the event-stream headers. */
  open(): void {
    this.#raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  }

  write(event: unknown): void {
    if (!this.closed) this.#raw.write(`data: ${JSON.stringify(event)}\n\n`);
  }

  /** Ends the stream with `data: [DONE]`. */
  done(): void {
    if (!this.closed) this.#raw.end('data: [DONE]\n\n');
  }

  /** Ends the stream without [DONE] (after an error event). */
  end(): void {
    this.#raw.end();
  }
}
