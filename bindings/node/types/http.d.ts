// Types of grenache-native/http: `{ PeerRPCClient, PeerRPCServer }` of grenache-nodejs-http 1.0.2
// (lib/http.js).
import { Duplex } from 'stream'
import { IncomingMessage, ServerResponse } from 'http'
import * as Base from './base'
import Link = require('./link')

export type Callback<T = any> = Base.Callback<T>

export interface HttpRequestOptions extends Base.RpcRequestOptions {
  /** gzip the request and the reply. */
  compress?: boolean
  /** stream() only: extra headers (non-strings JSON-encoded), e.g. `_a`, `_ar`. */
  headers?: Record<string, any>
}

export interface RequestMeta {
  /** The client certificate over HTTPS (`fingerprint`: SHA-1 'AA:BB:...'), else undefined. */
  cert: { fingerprint: string; [field: string]: any } | undefined
  /** The request was chunked (a stream() client). */
  isStream: boolean
  compress: boolean
  /** The `_gr` header: [rid, key]. */
  infoHeaders?: [string, string]
  /** The `_a` header. */
  action: string | null
  /** The `_ar` header, parsed ({} when absent). */
  args: any
}

export interface StreamHandler {
  /** Writes `[rid, err ? err.message : null, res]` and ends the response. */
  reply(rid: string, err: Error | null | undefined, res?: any): void
}

export class TransportRPCServer extends Base.TransportRPCServer {
  /** conf.disableBuffered: only 'stream' events (Node's req/res). */
  disableBuffered: boolean
  /** With disableBuffered: parse `req` as a buffered request ('request' follows). */
  handleBufferedRequest(req: IncomingMessage, res: ServerResponse, meta: RequestMeta): void
  on(event: 'request', listener: (rid: string, key: string, payload: any, handler: Base.ReplyHandler, cert: RequestMeta['cert'], meta: RequestMeta) => void): this
  /** Every request before buffering, with Node's req/res: served by Node when the transport has
   * disableBuffered or 'stream' listeners when listen() is called. */
  on(event: 'stream', listener: (req: IncomingMessage, res: ServerResponse, meta: RequestMeta, handler: StreamHandler) => void): this
  on(event: 'request-error', listener: () => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export interface HttpServerConf extends Base.PeerConf {
  /** Idle socket timeout, ms (Node-served mode). */
  timeout?: number
  disableBuffered?: boolean
}

export class PeerRPCServer extends Base.Peer {
  constructor(link: Base.LinkLike | Link, conf?: HttpServerConf)
  /** After init(): the server transport (`dest` is any string, e.g. 'server'). */
  transport(dest: string, opts?: object): TransportRPCServer
}

export class PeerRPCClient extends Base.PeerRPCClient<HttpRequestOptions> {
  /** A Duplex at once: written bytes are the request body (sent chunked with `_gr`), read bytes
   * the reply body. */
  stream(key: string, opts?: HttpRequestOptions): Duplex
}
