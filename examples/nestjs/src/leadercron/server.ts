// The HTTP side of the contract: a plain node:http handler for POST
// /jobs/{name} and POST /drain, and the private listener that serves it
// apart from the app's public port. Nest's body parser, guards and
// exception filters are not in the way: the handler reads the raw request
// line and body bytes itself, which the signature covers.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, isIP } from 'node:net';
import {
  Inject,
  Injectable,
  Logger,
  type LoggerService,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { isLoopback, resolveTriggerKeys } from './auth.js';
import { type Code, Codes } from './contract.js';
import { LeadercronJobs } from './leadercron.jobs.js';
import { checkModuleOptions, DEFAULT_LISTEN, LEADERCRON_KEYS, LEADERCRON_OPTIONS, LISTEN_ENV, type LeadercronModuleOptions } from './options.js';
import { MAX_BODY_BYTES, type TriggerKey, verifyTrigger } from './signature.js';

/**
 * A body between MAX_BODY_BYTES and this is read and discarded before the
 * 413, so that the sidecar reads the answer on a connection that stays
 * usable; a larger one gets its 413 at once and the connection is closed.
 */
const DISCARD_BYTES = 1024 * 1024;

/** Options of createLeadercronHandler and createLeadercronServer. */
export interface LeadercronHandlerOptions {
  /** As LeadercronModuleOptions.secrets: undefined reads the environment, [] means none. */
  secrets?: ReadonlyArray<string | Uint8Array | TriggerKey>;
  /** As LeadercronModuleOptions.now. */
  now?: () => number;
  /** Default a Nest Logger with context "Leadercron". */
  logger?: LoggerService;
  /** As LeadercronModuleOptions.prefix: serve {prefix}/jobs/{name} and {prefix}/drain. Default none. */
  prefix?: string;
}

/**
 * The normalised form of a route prefix: "" (none), or "/a/b" without a
 * trailing slash. undefined, "" and "/" mean none. Throws an Error naming
 * `name` when value is not an absolute path of plain segments (no query,
 * fragment, "//", "." or ".." segment, space or control character).
 */
export function normalizePrefix(value: string | undefined, name: string): string {
  if (value === undefined || value === '' || value === '/') {
    return '';
  }
  const p = typeof value === 'string' && value.endsWith('/') ? value.slice(0, -1) : value;
  const segment = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%]+$/;
  const ok =
    typeof p === 'string' &&
    p.startsWith('/') &&
    p
      .slice(1)
      .split('/')
      .every((seg) => segment.test(seg) && seg !== '.' && seg !== '..');
  if (!ok) {
    throw new Error(`leadercron: ${name} ${JSON.stringify(value)} is not a path prefix such as /internal/leadercron`);
  }
  return p;
}

/** A request handler for node:http (or an Express/Fastify raw route). */
export type LeadercronHandler = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * The path of the request line as received, without the query: what the
 * sidecar signed. For an absolute-form request target
 * (POST http://host/jobs/x) its path.
 */
export function wirePath(url: string | undefined): string {
  let u = url ?? '';
  const abs = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#]*/.exec(u);
  if (abs) {
    u = u.slice(abs[0].length);
  }
  const end = u.search(/[?#]/);
  return end < 0 ? u : u.slice(0, end);
}

type BodyResult = { kind: 'ok'; body: Buffer } | { kind: 'too_large'; closeConnection: boolean } | { kind: 'aborted' };

/** Reads req's body, at most MAX_BODY_BYTES of it; its listeners are attached before it returns. */
function readBody(req: IncomingMessage): Promise<BodyResult> {
  return new Promise((resolve) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > DISCARD_BYTES) {
      resolve({ kind: 'too_large', closeConnection: true });
      return;
    }
    let chunks: Buffer[] = [];
    let total = 0;
    let settled = false;
    const settle = (r: BodyResult): void => {
      if (!settled) {
        settled = true;
        chunks = [];
        req.off('data', onData);
        resolve(r);
      }
    };
    const onData = (chunk: Buffer): void => {
      total += chunk.length;
      if (total > DISCARD_BYTES) {
        settle({ kind: 'too_large', closeConnection: true });
      } else if (total <= MAX_BODY_BYTES) {
        chunks.push(chunk);
      } else {
        chunks = []; // over the limit: read on and discard, answer 413 at the end
      }
    };
    req.on('data', onData);
    req.once('end', () => {
      settle(total > MAX_BODY_BYTES ? { kind: 'too_large', closeConnection: false } : { kind: 'ok', body: Buffer.concat(chunks, total) });
    });
    req.once('error', () => settle({ kind: 'aborted' }));
    req.once('close', () => settle({ kind: 'aborted' })); // after 'end' this is a no-op
  });
}

/**
 * Ends the connection once res is sent, without a reset: half-close (FIN),
 * go on reading and discarding what the peer still sends for 500 ms, then
 * destroy. (With Connection: close, Node.js destroys the socket right
 * after the answer, and unread incoming bytes make the kernel send a RST
 * that can discard the answer before the peer reads it.)
 */
function closeAfter(res: ServerResponse): void {
  const socket = res.socket;
  res.once('finish', () => {
    if (!socket || socket.destroyed) {
      return;
    }
    socket.on('data', () => undefined);
    socket.end();
    setTimeout(() => socket.destroy(), 500).unref();
  });
}

function sendJSON(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) {
    return;
  }
  const data = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(data)),
  });
  res.end(data);
}

/**
 * The handler of POST /jobs/{name} and POST /drain for jobs. Before
 * anything else it authenticates the request: with secrets, the body (at
 * most 64 KiB, else 413) and a valid Leadercron-Signature are required
 * (401 bad_signature / stale_signature); without, only loopback peers are
 * served (403 not_loopback). A refused request changes no state. Then
 * POST /drain drains and POST /jobs/{name} goes to LeadercronJobs.
 * Other paths get 404, other methods 405. With options.prefix the two
 * paths are {prefix}/drain and {prefix}/jobs/{name}; the signature still
 * covers the whole path as sent. It logs once, now, how triggers are
 * authenticated. Throws if a secret or the prefix is invalid.
 */
export function createLeadercronHandler(jobs: LeadercronJobs, options: LeadercronHandlerOptions = {}): LeadercronHandler {
  const keys = resolveTriggerKeys(options.secrets);
  const prefix = normalizePrefix(options.prefix, 'option prefix');
  const now = options.now ?? Date.now;
  const log = options.logger ?? new Logger('Leadercron');
  if (keys.length === 0) {
    log.warn({
      msg: 'triggers are unauthenticated: only requests from loopback peers are served (set LEADERCRON_TRIGGER_SECRET or LEADERCRON_TRIGGER_SECRET_FILE to require signed triggers)',
    });
  } else {
    log.log({ msg: 'triggers must be signed', key_ids: keys.map((k) => k.kid) });
  }

  return (req, res) => {
    const path = wirePath(req.url);
    const peer = req.socket.remoteAddress;
    const deny = (status: number, code: Code, error: string, close = false): void => {
      log.warn({ msg: 'request refused', path, peer, status, code, reason: error });
      if (close) {
        closeAfter(res);
      }
      sendJSON(res, status, { error, code });
    };

    if (keys.length === 0 && !isLoopback(peer)) {
      deny(403, Codes.notLoopback, 'no secret is configured: triggers are only accepted from loopback peers', true);
      return;
    }
    // The route, once the prefix is taken off (undefined: not under it).
    const route = prefix === '' ? path : path.startsWith(`${prefix}/`) ? path.slice(prefix.length) : undefined;
    let job: string | undefined;
    if (route === '/drain') {
      job = undefined;
    } else if (route !== undefined && /^\/jobs\/[^/]+$/.test(route)) {
      job = route.slice('/jobs/'.length);
    } else {
      sendJSON(res, 404, { error: `not found: ${path} (this listener serves POST ${prefix}/jobs/{name} and POST ${prefix}/drain)`, code: Codes.notFound });
      return;
    }
    if (req.method !== 'POST') {
      sendJSON(res, 405, { error: `method ${req.method} not allowed: use POST`, code: Codes.methodNotAllowed }, { allow: 'POST' });
      return;
    }

    void readBody(req).then(async (read) => {
      if (read.kind === 'aborted') {
        return;
      }
      if (read.kind === 'too_large') {
        deny(413, Codes.bodyTooLarge, `body larger than ${MAX_BODY_BYTES} bytes`, read.closeConnection);
        return;
      }
      if (keys.length > 0) {
        const v = verifyTrigger(keys, { method: req.method ?? '', path, headers: req.headersDistinct, body: read.body }, now());
        if (!v.ok) {
          deny(v.status, v.code, v.error);
          return;
        }
      }
      if (job === undefined) {
        sendJSON(res, 200, { running: jobs.drain() });
        return;
      }
      let name: string;
      try {
        name = decodeURIComponent(job);
      } catch {
        sendJSON(res, 400, { error: `bad job name ${JSON.stringify(job)} in the path`, code: Codes.badRequest });
        return;
      }
      const hangup = new AbortController();
      res.on('close', () => {
        if (!res.writableFinished) {
          hangup.abort(new Error('the sidecar hung up'));
        }
      });
      try {
        const answer = await jobs.handleTrigger(name, req.headers, read.body, hangup.signal);
        sendJSON(res, answer.status, answer.body);
      } catch (err) {
        log.error({ msg: 'trigger handling failed', job: name, error: err instanceof Error ? err.message : String(err) });
        sendJSON(res, 500, { error: 'internal error', code: Codes.internalError });
      }
    });
  };
}

/** An http.Server (not listening yet) that serves createLeadercronHandler(jobs, options). */
export function createLeadercronServer(jobs: LeadercronJobs, options: LeadercronHandlerOptions = {}): Server {
  return createServer(createLeadercronHandler(jobs, options));
}

/** A parsed "host:port". host "" means every interface. */
export interface ListenAddress {
  host: string;
  port: number;
}

/** Parses "host:port" or "[v6]:port"; throws an Error naming `name`. */
export function parseListenAddress(value: string, name: string): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.%\w-]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`leadercron: ${name} ${JSON.stringify(value)} is not host:port, such as ${DEFAULT_LISTEN}`);
  }
  return { host: m[1] ?? m[2] ?? '', port };
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * The module's private trigger listener: an HTTP server of its own, on
 * LeadercronModuleOptions.listen, serving only the contract. Started at
 * application bootstrap, closed at application shutdown (after
 * LeadercronJobs has drained and waited for the runs in flight, so that the
 * sidecar's POST /drain polls are answered until then).
 */
@Injectable()
export class LeadercronListener implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly address: ListenAddress | undefined;
  private readonly what: string;
  private readonly prefix: string;
  private readonly options: LeadercronModuleOptions;
  private readonly log: LoggerService;
  private server: Server | undefined;
  private bound: AddressInfo | undefined;

  constructor(
    @Inject(LEADERCRON_OPTIONS) options: LeadercronModuleOptions,
    @Inject(LEADERCRON_KEYS) private readonly keys: TriggerKey[],
    private readonly jobs: LeadercronJobs,
  ) {
    this.options = options = checkModuleOptions(options);
    this.log = options.logger ?? new Logger('Leadercron');
    this.prefix = normalizePrefix(options.prefix, 'LeadercronModule option prefix');
    let listen = options.listen;
    this.what = 'LeadercronModule option listen';
    if (listen === undefined) {
      const env = process.env[LISTEN_ENV];
      listen = env ? env : DEFAULT_LISTEN;
      this.what = env ? LISTEN_ENV : 'the default listen address';
    }
    if (listen === false) {
      return;
    }
    this.address = parseListenAddress(listen, this.what);
    const host = this.address.host;
    if (keys.length === 0 && (host === '' || (isIP(host) !== 0 && !isLoopback(host)))) {
      throw this.notLoopbackError(listen);
    }
  }

  private notLoopbackError(listen: string): Error {
    return new Error(
      `leadercron: refusing to serve unauthenticated triggers on ${this.what} ${JSON.stringify(listen)}: not a loopback address, and no secret is configured; ` +
        `listen on 127.0.0.1 (the sidecar shares the app's network namespace) or set LEADERCRON_TRIGGER_SECRET(_FILE)`,
    );
  }

  /** The listener's HTTP server, once started. */
  get httpServer(): Server | undefined {
    return this.server;
  }

  /**
   * Where the sidecar reaches the listener (its LEADERCRON_APP_URL), once
   * started: e.g. http://127.0.0.1:8081, or
   * http://127.0.0.1:8081/internal/leadercron with a prefix.
   */
  get url(): string | undefined {
    if (!this.bound) {
      return undefined;
    }
    let host = this.bound.address;
    if (host === '0.0.0.0') {
      host = '127.0.0.1';
    } else if (host === '::') {
      host = '::1';
    }
    return `http://${formatHost(host)}:${this.bound.port}${this.prefix}`;
  }

  async onApplicationBootstrap(): Promise<void> {
    if (!this.address || this.server) {
      return;
    }
    const server = createLeadercronServer(this.jobs, { secrets: this.keys, now: this.options.now, logger: this.log, prefix: this.prefix });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.address!.port, this.address!.host || undefined, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const bound = server.address() as AddressInfo;
    if (this.keys.length === 0 && !isLoopback(bound.address)) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw this.notLoopbackError(`${this.address.host}:${this.address.port}`);
    }
    this.server = server;
    this.bound = bound;
    this.log.log({ msg: 'serving the leadercron contract (POST /jobs/{name}, POST /drain under url)', url: this.url });
  }

  async onApplicationShutdown(): Promise<void> {
    const server = this.server;
    if (!server) {
      return;
    }
    this.server = undefined;
    this.bound = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }
}
