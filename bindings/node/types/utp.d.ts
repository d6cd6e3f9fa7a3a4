// Types of grenache-native/utp: `{ PeerRPCClient, PeerRPCServer, TransportRPCClient,
// TransportRPCServer }` of grenache-nodejs-utp 1.0.0 (lib/utp.js), written from the code, plus the
// broker options of grenache-native.
import * as Base from './base'
import Link = require('./link')

export type Callback<T = any> = Base.Callback<T>

/** An endpoint: what 'punch' events and the request handler's sixth argument carry. */
export interface Endpoint {
  address: string
  family: 'IPv4'
  port: number
}

/** Where to punch or send: `{ address, port }` (a punch event's object works as it is). */
export interface Target {
  address: string
  port: number
  [k: string]: any
}

export interface UtpPeerConf extends Base.PeerConf {
  /** A broker's name (`grenache broker --name`): clients find workers through it and both sides
   * punch each other before the request; servers register names with it (`register`). */
  broker?: string
  /** ms a waited punch (or a broker's introduction) may take. Default 5000. */
  punchTimeout?: number
}

export interface PunchOptions {
  /** Punch until answered (every 100 ms), at most this many ms; cb gets ERR_PUNCH_TIMEOUT after.
   * Without it, one punch is sent and cb(null) follows at once (the reference). */
  timeout?: number
  maxActiveKeyDests?: number
  maxActiveDestTransports?: number
}

export class TransportRPCServer extends Base.TransportRPCServer {
  /** No port: the process's socket has one (read `port` afterwards); a port binds that socket on
   * it if it is not bound yet, else throws ERR_PORT_MISMATCH unless it is the same. */
  listen(port?: number): this
  /** One punch to `to`; with `cb`, punches until answered (`conf.punchTimeout`). */
  punch(to: Target, cb?: (err: Error | null) => void): void
  /** With `conf.broker`: registers `name` with the broker now and every 5 s until unlisten. */
  register(name: string): this
  /** `cert` is always null; `additional` is the caller as this socket saw it (its NAT mapping). */
  on(event: 'request', listener: (rid: string, key: string, payload: any, handler: Base.ReplyHandler, cert: null, additional: Endpoint) => void): this
  /** A punch reached the process's socket (on every listening server and live client transport). */
  on(event: 'punch', listener: (other: Endpoint) => void): this
  on(event: 'request-error', listener: () => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export class TransportRPCClient extends Base.TransportRPCClient {
  /** One punch to `to`; with `cb`, punches until answered (`conf.punchTimeout`). */
  punch(to: Target, cb?: (err: Error | null) => void): void
  on(event: 'punch', listener: (other: Endpoint) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export class PeerRPCServer extends Base.Peer {
  constructor(link: Base.LinkLike | Link, conf?: UtpPeerConf)
  transport(dest: string, opts?: object): TransportRPCServer
  /** Looks `name` up and punches one of its destinations from the process's socket. */
  punch(name: string, cb?: (err: Error | null) => void): void
  punch(name: string, opts: PunchOptions, cb?: (err: Error | null) => void): void
}

export class PeerRPCClient extends Base.PeerRPCClient {
  constructor(link: Base.LinkLike | Link, conf?: UtpPeerConf & Base.RpcClientConf)
  /** `key` a service name, or an endpoint (no lookup; the key sent is 'address:port'). */
  request(key: string | Target, payload: any, cb: Callback): void
  request(key: string | Target, payload: any, opts: Base.RpcRequestOptions | undefined, cb: Callback): void
  transport(dest: string, opts?: object): TransportRPCClient
  /** Looks `name` up and punches one of its destinations from the process's socket. */
  punch(name: string, cb?: (err: Error | null) => void): void
  punch(name: string, opts: PunchOptions, cb?: (err: Error | null) => void): void
}
