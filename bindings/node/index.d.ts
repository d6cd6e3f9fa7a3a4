// Types of grenache-native (index.js).

/** Any JSON-serialisable value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** An error of the library: `code` like "ERR_TIMEOUT", "ERR_GRAPE_LOOKUP_EMPTY", "ERR_REMOTE"
 * (then `detail` is the remote handler's message), "ERR_CONNECT", "ERR_TRANSPORT_CLOSE",
 * "ERR_INVALID_ARGUMENT", "ERR_SEQ_TOO_LOW", "ERR_CAS_MISMATCH", "ERR_CANCELLED"...; `errno` is
 * its stable number (the C ABI's result code). */
export class GrenacheError extends Error {
  readonly code: string
  readonly errno: number
  readonly detail: string
}

export interface GrapeOptions {
  /** UDP port of the DHT (0: any free port). */
  dhtPort?: number
  /** TCP port of the HTTP API (0: any free port). */
  apiPort?: number
  /** Other Grapes' DHT addresses, "host:port". */
  bootstrap?: string[]
  /** The address announced for services (default: the caller's address). */
  host?: string
}

/** A Grape (DHT node + HTTP API) running in this process; the constructor starts it. */
export class Grape {
  constructor(opts?: GrapeOptions)
  readonly dhtPort: number
  readonly apiPort: number
  /** The HTTP API's URL on loopback, for a Link. */
  readonly url: string
  stop(): Promise<void>
}

/** An ed25519 key pair for mutable DHT items. */
export interface Keypair {
  readonly secretHex: string
  readonly publicHex: string
}
export const Keypair: {
  generate(): Keypair
  fromSecretHex(hex: string): Keypair
}

export class ServerTls {
  constructor(opts: { cert: string | Buffer; key: string | Buffer; ca?: string | Buffer; clientAuth?: 'none' | 'optional' | 'required' })
}

export class ClientTls {
  constructor(opts: { ca: string | Buffer; cert?: string | Buffer; key?: string | Buffer })
}

export interface LinkOptions {
  /** The Grape's HTTP API URL (default http://127.0.0.1:30001). */
  grape?: string
  /** Timeout of one call to the Grape, ms. */
  requestTimeout?: number
  /** How long a lookup result is reused, ms. */
  lookupCache?: number
}

/** A client of one Grape's HTTP API. */
export class Link {
  constructor(opts?: LinkOptions | string)
  /** The "host:port" of every worker of `name`; rejects with ERR_GRAPE_LOOKUP_EMPTY when none. */
  lookup(name: string): Promise<string[]>
  announce(name: string, port: number): Promise<void>
  /** Keeps announcing every `interval` ms (jittered). */
  startAnnouncing(name: string, port: number, interval?: number): void
  stopAnnouncing(name: string, port: number): boolean
  /** Stores an immutable item; resolves with its hex hash. The Grape returns `v` as text
   * (like the reference), so store strings. */
  put(value: Json): Promise<string>
  /** Signs and stores a mutable item; resolves with its hex target. */
  putMutable(key: Keypair, value: Json, opts: { seq: number; salt?: string; cas?: number }): Promise<string>
  get(hash: string, opts?: { salt?: string }): Promise<{ v: Json; [field: string]: Json } | null>
  close(): void
}

export class RequestInfo {
  /** The client certificate's SHA-1 fingerprint over mutual TLS, else null. */
  readonly fingerprint: string | null
}

export interface ServerOptions {
  /** 'utp': one UDP socket for the service, punches and broker traffic (no TLS). */
  transport?: 'http' | 'ws' | 'utp'
  port?: number
  tls?: ServerTls
  /** A handler that has not answered within this many ms is answered ERR_TIMEOUT. */
  replyTimeout?: number
  /** WS over TLS only: accept only clients whose certificate has one of these SHA-1
   * fingerprints ("AA:BB:..."); others are refused before the upgrade (HTTP 401), like the
   * reference's verifyClient whitelist. */
  allowFingerprints?: string[]
  /** uTP only: register every announced name with the broker announced under this name (every
   * 5 s, from the server's socket), so clients behind other NATs are introduced and punched. */
  broker?: string
}

/** An RPC server: the handler returns the result (or a Promise); throwing answers the error's
 * message. */
export class Server {
  constructor(link: Link, handler: (payload: any, info: RequestInfo) => Json | Promise<Json>, opts?: ServerOptions)
  readonly port: number
  announce(name: string): Promise<void>
  startAnnouncing(name: string, interval?: number): void
  stopAnnouncing(name: string): boolean
  /**
   * Graceful shutdown, for restarts without failed requests: stops announcing and listening
   * (grenache clients send requests to another worker), lets the requests already received
   * finish and their replies go out, then closes; after `grace` ms (default 10000) the rest are
   * closed. Resolves true when everything finished in time. Call `close()` afterwards.
   */
  shutdown(grace?: number): Promise<boolean>
  /** uTP: punches `target` ("ip:port") every 100 ms until it answers; rejects with
   * ERR_PUNCH_TIMEOUT after `timeout` ms (default 5000), e.g. behind a symmetric NAT. */
  punch(target: string, timeout?: number): Promise<void>
  /** uTP: `cb(from)` ("ip:port", the sender's NAT mapping) for every punch reaching the
   * server's socket, until closed. */
  onPunch(cb: (from: string) => void): void
  close(): void
}

export interface RequestOptions {
  /** ms */
  timeout?: number
  /** More attempts on other workers when one fails to deliver. */
  retry?: number
  /** HTTP: gzip the request and the reply. */
  compress?: boolean
  /** Send to this "host:port" without a lookup. */
  dest?: string
}

export class Client {
  /** `broker` (uTP): find the workers through the broker announced under that name and punch
   * them (at most `punchTimeout` ms; ERR_PUNCH_TIMEOUT when none could be) before the requests. */
  constructor(link: Link, opts?: { transport?: 'http' | 'ws' | 'utp'; tls?: ClientTls; timeout?: number; broker?: string; punchTimeout?: number })
  request(name: string, payload: Json, opts?: RequestOptions): Promise<any>
  map(name: string, payload: Json, opts?: { timeout?: number; compress?: boolean; limit?: number }): Promise<any[]>
  close(): void
}

/** A PUB/SUB publisher (WebSocket). A subscriber that cannot keep up loses its oldest queued
 * messages rather than growing the publisher's memory. */
export class Publisher {
  constructor(link: Link, opts?: { port?: number; tls?: ServerTls })
  readonly port: number
  readonly subscribers: number
  startAnnouncing(name: string, interval?: number): void
  publish(message: Json): number
  close(): void
}

/** Subscribes to every publisher of `name`; reconnects when they go and come back. */
export class Subscriber {
  constructor(link: Link, name: string, onMessage: (message: string | Buffer, publisher: string) => void, opts?: { tls?: ClientTls })
  readonly publishers: number
  close(): void
}

export function version(): string
