import { appendFileSync } from 'node:fs';
import { context, propagation, ROOT_CONTEXT, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, SimpleSpanProcessor, TracerProvider, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace';
import type { Headers } from './transport.ts';

/**
 * OpenTelemetry for the cluster (SPEC §6, issue 5): spans request → round → drafting level → actor
 * call, across processes by W3C trace context in NATS headers and BullMQ job data. Off unless
 * configured: the standard OTEL_* variables turn on the OTLP/HTTP exporter
 * (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_TRACES_EXPORTER=none keeps
 * it off), and CASCADE_TRACE_FILE writes finished spans as JSON lines (what `cascade bench cluster`
 * and the tests read back). Without either, the API is a no-op and costs nothing.
 */
export const tracer = trace.getTracer('cascade-cluster');

/** One finished span as CASCADE_TRACE_FILE stores it. */
export interface SpanRecord {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly service: string;
  readonly startMs: number;
  readonly endMs: number;
  readonly attributes: Record<string, unknown>;
}

const hrMs = (t: [number, number]): number => t[0] * 1e3 + t[1] / 1e6;

export function spanRecord(s: ReadableSpan): SpanRecord {
  return {
    traceId: s.spanContext().traceId,
    spanId: s.spanContext().spanId,
    parentSpanId: s.parentSpanContext?.spanId,
    name: s.name,
    service: String(s.resource.attributes['service.name'] ?? ''),
    startMs: hrMs(s.startTime),
    endMs: hrMs(s.endTime),
    attributes: { ...s.attributes },
  };
}

/** Appends finished spans to a file, one JSON object per line (several processes may share it). */
export class JsonLinesSpanExporter implements SpanExporter {
  constructor(private readonly path: string) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    try {
      if (spans.length) appendFileSync(this.path, spans.map((s) => JSON.stringify(spanRecord(s))).join('\n') + '\n');
      done({ code: ExportResultCode.SUCCESS });
    } catch (error) {
      done({ code: ExportResultCode.FAILED, error: error as Error });
    }
  }

  async shutdown(): Promise<void> {}
}

let provider: TracerProvider | undefined;

/**
 * Installs the tracer provider for this process when tracing is configured (or an exporter is
 * given, as tests do). Returns whether tracing is on. Idempotent.
 */
export function setupTracing(service: string, extra?: SpanExporter): boolean {
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  if (provider) return true;
  const env = process.env;
  const processors = [];
  if (extra) processors.push(new SimpleSpanProcessor({ exporter: extra }));
  if (env.CASCADE_TRACE_FILE) processors.push(new SimpleSpanProcessor({ exporter: new JsonLinesSpanExporter(env.CASCADE_TRACE_FILE) }));
  const otlp = (env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) && env.OTEL_TRACES_EXPORTER !== 'none';
  if (otlp) processors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter() }));
  if (!processors.length) return false;
  provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME ?? service }),
    spanProcessors: processors,
  });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return true;
}

/** Flushes and stops the provider (at process exit). */
export async function shutdownTracing(): Promise<void> {
  await provider?.shutdown().catch(() => undefined);
  provider = undefined;
}

/** Trace context of `ctx` as headers for a NATS message or job data. */
export function injectHeaders(ctx: Context, into: Headers = {}): Headers {
  propagation.inject(ctx, into);
  return into;
}

/** The context carried by incoming headers (ROOT when there is none). */
export const extractContext = (headers: Headers | undefined): Context => propagation.extract(ROOT_CONTEXT, headers ?? {});

/** Runs `fn` in a child span of `parent`; records an exception and error status on throw. */
export async function inSpan<T>(name: string, parent: Context, attributes: Record<string, string | number | boolean>, fn: (span: Span, ctx: Context) => Promise<T>): Promise<T> {
  const span = tracer.startSpan(name, { attributes }, parent);
  const ctx = trace.setSpan(parent, span);
  try {
    return await context.with(ctx, () => fn(span, ctx));
  } catch (err) {
    span.recordException(err as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
    throw err;
  } finally {
    span.end();
  }
}
