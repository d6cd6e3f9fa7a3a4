// Types shared by grenache-native/http and grenache-native/ws: the peers, transports and pools of
// grenache-nodejs-base, as the code behaves (lib/base.js).
import { EventEmitter } from 'events'
import Link = require('./link')

/** Node-style callback. */
export type Callback<T = any> = (err: Error | null | undefined, result?: T) => void

/** The Link a peer looks services up with: grenache-native/link or the reference's. */
export interface LinkLike {
  lookup(key: string, opts: { timeout?: number; retry?: number }, cb: Callback<string[]>): void
}

/** TLS material of a peer, PEM Buffers (plus any Node tls option). */
export interface SecureConf {
  key: Buffer
  cert: Buffer
  ca: Buffer
  rejectUnauthorized?: boolean
  requestCert?: boolean
  [option: string]: any
}

export interface PeerConf {
  secure?: SecureConf
  /**
   * Servers (an extension of the reference): limits against hostile load by the core's names,
   * in any spelling (`{ max_connections_per_ip: 100, ws_idle_timeout_ms: 60000 }`), over the
   * core's defaults; `listen()` throws `ERR_INVALID_ARGUMENT` for a name or value the core
   * refuses. HTTP servers that Node serves itself (`disableBuffered`, or a `stream` listener)
   * do not apply them.
   */
  limits?: Record<string, number>
  [option: string]: any
}

export class Peer extends EventEmitter {
  constructor(link: LinkLike | Link, conf?: PeerConf)
  conf: PeerConf
  link: LinkLike | Link
  /** Required before transport()/request(). */
  init(): void
  isActive(): boolean
  /** A uniformly random destination. */
  dest(dests: string[], key: string, opts?: object): string
  stop(): void
}

export class Transport extends EventEmitter {
  constructor(client: Peer, conf?: object)
  /** A uuid v4. */
  readonly id: string
  conf: any
  client: Peer
  init(): void
  isActive(): boolean
  monitor(): void
  stop(): void
}

export class TransportSocket extends Transport {
  isConnecting(): boolean
  isConnected(): boolean
  isListening(): boolean
}

export interface RpcRequestOptions {
  /** ms; none by default (the request waits for its reply). */
  timeout?: number
  /** Total attempts (also repeated on application errors). Default 1. */
  retry?: number
  maxActiveKeyDests?: number
  maxActiveDestTransports?: number
}

export class TransportRPCClient extends TransportSocket {
  request(key: string, payload: any, opts: { timeout?: number; [k: string]: any }, cb: Callback): void
  handleReply(rid: string, err: Error | null, data?: any): void
}

/** The object a 'request' listener answers with: sends `[rid, err ? err.message : null, data]`
 * (a string `err` has no `.message`: the client sees success). */
export interface ReplyHandler {
  reply(err: Error | null | undefined, data?: any): void
}

export class TransportRPCServer extends TransportSocket {
  /** The listening port (the bound one when listening on 0). */
  port: number
  /** Binds all interfaces; throws (EADDRINUSE...) when it cannot. */
  listen(port: number): this
  unlisten(): void
  on(event: 'request-error', listener: () => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export class Pool {
  init(): void
  add(k: string, obj: { id: string }): void
  del(k: string, obj: { id: string }): void
  list(k: string): any[]
  monitor(): void
  stop(): void
}

export class PoolTransport extends Pool {
  hasActive(dest: string): boolean
  getActive(dest: string): TransportRPCClient[]
  list(dest: string): TransportRPCClient[]
}

export interface RpcClientConf extends PeerConf {
  /** Default 5. */
  maxActiveKeyDests?: number
  /** Default 3. */
  maxActiveDestTransports?: number
}

export class PeerRPCClient<O extends RpcRequestOptions = RpcRequestOptions> extends Peer {
  constructor(link: LinkLike | Link, conf?: RpcClientConf)
  conf: RpcClientConf
  /** Created by init(). */
  tpool: PoolTransport
  request(key: string, payload: any, cb: Callback): void
  request(key: string, payload: any, opts: O | undefined, cb: Callback): void
  /** Every worker of `key` (or `opts.limit` random ones); results in destination order. */
  map(key: string, payload: any, opts: O & { limit?: number }, cb: Callback<any[]>): void
  transport(dest: string, opts?: object): TransportRPCClient
}
