// Types of grenache-native (index.js).

/** Any JSON-serialisable value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/** An error of the library: `code` is its stable number (the C ABI's result code, the same in
 * every face), `name` its "ERR_*" string ("ERR_TIMEOUT", "ERR_GRAPE_LOOKUP_EMPTY", "ERR_REMOTE"
 * (then `message` is the remote handler's text)...), `message` the same text as in the C, Ruby
 * and Python faces. Every error kind of the core has a class of its own (below) under one of
 * six family classes. */
export class GrenacheError extends Error {
  readonly code: number
  readonly name: string
}
/** 1xx: the caller's input. */
export class InputError extends GrenacheError {}
/** 2xx: the transport. */
export class TransportError extends GrenacheError {}
/** 3xx: Grape and DHT. */
export class DiscoveryError extends GrenacheError {}
/** 4xx: RPC failures reported by the other side. */
export class RpcError extends GrenacheError {}
/** 5xx: TLS. */
export class TlsError extends GrenacheError {}
/** 9xx: bugs in the library, cancellations. */
export class LibraryError extends GrenacheError {}
export class NullParameterError extends InputError {}
export class InvalidArgumentError extends InputError {}
export class InvalidUtf8Error extends InputError {}
export class AlreadyUsedError extends InputError {}
export class BufferTooSmallError extends InputError {}
export class InvalidStateError extends InputError {}
export class IoError extends TransportError {}
export class ConnectError extends TransportError {}
export class TimeoutError extends TransportError {}
export class ClosedError extends TransportError {}
export class PayloadTooLargeError extends TransportError {}
export class DecodeError extends TransportError {}
export class ProtocolError extends TransportError {}
export class PunchTimeoutError extends TransportError {}
export class LookupEmptyError extends DiscoveryError {}
export class GrapeError extends DiscoveryError {}
export class NoNodesError extends DiscoveryError {}
export class AllQueriesFailedError extends DiscoveryError {}
export class SeqTooLowError extends DiscoveryError {}
export class CasMismatchError extends DiscoveryError {}
export class DhtError extends DiscoveryError {}
export class RemoteError extends RpcError {}
export class NoReplyError extends RpcError {}
export class HandlerPanickedError extends RpcError {}
export class TlsHandshakeError extends TlsError {}
export class CertificateError extends TlsError {}
export class TlsConfigError extends TlsError {}
export class ClientRefusedError extends TlsError {}
export class PanicError extends LibraryError {}
export class InternalError extends LibraryError {}
export class CancelledError extends LibraryError {}

/** Throw it from a handler (or reject with it) to answer the client with an error: the caller
 * gets a RemoteError whose message is exactly this message. Any other exception is printed and
 * answered "ERR_HANDLER_PANIC". */
export class ReplyError extends Error {}

export interface GrapeOptions {
  /** UDP port of the DHT (0: any free port). */
  dhtPort?: number
  /** TCP port of the HTTP API (0: any free port). */
  apiPort?: number
  /** Other Grapes' DHT addresses, "host:port". */
  bootstrap?: string[]
  /** The address announced for services (default: the caller's address). */
  host?: string
  /**
   * A file that keeps the DHT node's id and routing table across restarts: read at start (a
   * restarted Grape rejoins without `bootstrap`), written at stop and every minute.
   */
  dhtState?: string
  /**
   * The numeric Grape options by name, the same in every face (camelCase or snake_case;
   * durations in ms): peerMaxAgeMs, nodeLivenessMs, maxTables, maxValues, maxPeers,
   * maxPayloadSize, maxConnections, announceWindowMs, lookupWindowMs, and the limits against
   * hostile load maxConnectionsPerIp, headerTimeoutMs, bodyTimeoutMs, bodyMinRate, idleTimeoutMs,
   * maxKeyLen, peerStoreBytes, maxRecordsPerIp, queriesPerIp, and the DHT's IPv6 (BEP 32)
   * dhtIpv6 (0 IPv4 only, 1 dual-stack where the host has IPv6 (default), 2 dual-stack required)
   * and announceIpv6 (1: announce over IPv6 too). An unknown name throws InvalidArgumentError.
   */
  options?: Record<string, number>
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
  /** Removes the announce of `name` on `port` from the Grapes at once (grenache-rs Grapes; a
   * Node reference Grape rejects with ERR_REQ_NOTFOUND and keeps it until it expires). Stop
   * announcing it first. Resolves with how many DHT nodes removed it. */
  unannounce(name: string, port: number): Promise<number>
  /** Pins the service `name` to its ed25519 public keys (hex; two during a key rotation; `[]`
   * unpins): lookups and requests of clients on this Link use only addresses with a valid signed
   * proof under one of them (docs/signed-announce.md). */
  pinService(name: string, keys: string[]): void
  /** Makes every announce of `name` through this Link publish a signed proof of the address
   * under each key pair, valid `ttl` ms (default 10 minutes). `[]` stops signing. */
  signAnnouncements(name: string, keys: Keypair[], opts?: { ttl?: number }): void
  /** Stores an immutable item; resolves with its hex hash. The Grape returns `v` as text
   * (like the reference), so store strings. */
  put(value: Json): Promise<string>
  /** Signs and stores a mutable item; resolves with its hex target. */
  putMutable(key: Keypair, value: Json, opts: { seq: number; salt?: string; cas?: number }): Promise<string>
  get(hash: string, opts?: { salt?: string }): Promise<{ v: Json; [field: string]: Json } | null>
  close(): void
}

/** The handle to answer one request, exactly once, now or later. A second answer throws
 * AlreadyUsedError; a reply collected unanswered answers "ERR_NO_REPLY". */
export class Reply {
  /** Answers with `value` (any JSON value). */
  send(value: Json): void
  /** Answers with JSON text, written to the wire as it is. */
  sendJson(text: string): void
  /** Answers with an error: the client gets a RemoteError with exactly this message. */
  error(message: string): void
  /** Gives the reply up: the client gets "ERR_NO_REPLY" at once. */
  abandon(): void
  readonly answered: boolean
  /** True when nobody waits for the answer any more. */
  readonly closed: boolean
}

export class RequestInfo {
  /** The client certificate's SHA-1 fingerprint over mutual TLS, else null. */
  readonly fingerprint: string | null
  /** Takes over the reply: what the handler returns is then ignored. */
  defer(): Reply
  readonly deferred: boolean
}

export interface ServerOptions {
  /** 'utp': one UDP socket for the service, punches and broker traffic (no TLS). */
  transport?: 'http' | 'ws' | 'zmq' | 'utp'
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
  /** Limits against hostile load by name, the same in every face (camelCase or snake_case;
   * durations in ms): maxConnections, maxConnectionsPerIp, headerTimeoutMs, bodyTimeoutMs,
   * bodyMinRate, idleTimeoutMs, maxBodyInFlight, wsPingIntervalMs, wsPongTimeoutMs,
   * wsIdleTimeoutMs. An unknown name or a zero cap throws InvalidArgumentError. */
  limits?: Record<string, number>
}

/** An RPC server: the handler returns the result (or a Promise); throwing a ReplyError answers
 * its message, any other exception "ERR_HANDLER_PANIC"; `info.defer()` takes the Reply. */
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
  /** Stops announcing and listening (connects to its port are refused once this returns) and
   * closes the connections. */
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
  constructor(link: Link, opts?: { transport?: 'http' | 'ws' | 'zmq' | 'utp'; tls?: ClientTls; timeout?: number; broker?: string; punchTimeout?: number })
  request(name: string, payload: Json, opts?: RequestOptions): Promise<any>
  map(name: string, payload: Json, opts?: { timeout?: number; compress?: boolean; limit?: number }): Promise<any[]>
  close(): void
}

/** A PUB/SUB publisher (WebSocket, or `transport: 'zmq'`: a ZeroMQ PUB socket). A subscriber that cannot keep up loses its oldest queued
 * messages rather than growing the publisher's memory. */
export class Publisher {
  constructor(link: Link, opts?: { port?: number; tls?: ServerTls; transport?: 'ws' | 'zmq' })
  readonly port: number
  readonly subscribers: number
  startAnnouncing(name: string, interval?: number): void
  publish(message: Json): number
  close(): void
}

/** Subscribes to every publisher of `name`; reconnects when they go and come back. */
export class Subscriber {
  constructor(link: Link, name: string, onMessage: (message: string | Buffer, publisher: string) => void, opts?: { tls?: ClientTls; transport?: 'ws' | 'zmq' })
  readonly publishers: number
  close(): void
}

export function version(): string
