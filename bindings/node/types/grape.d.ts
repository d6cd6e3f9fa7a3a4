// Types of grenache-native/grape: `{ Grape }` of grenache-grape 1.0.0 (lib/grape.js).
import { EventEmitter } from 'events'

export type Callback<T = any> = (err: Error | null | undefined, result?: T) => void

export interface GrapeConf {
  /** Address announced for services (default: the announcer's). */
  host?: string | null
  /** UDP port of the DHT. Default 20001 (0: any free port; `grape.dht_port` after start()). */
  dht_port?: number
  /** Other Grapes' DHT addresses, 'host:port'. */
  dht_bootstrap?: string[]
  /** TCP port of the HTTP API; required (start() fails with ERR_NO_PORT without it). */
  api_port?: number | null
  dht_maxTables?: number
  dht_maxValues?: number
  /** How long an announce is kept, ms. Default 120000. */
  dht_peer_maxAge?: number
  dht_nodeLiveness?: number
  dht_concurrency?: number
  /** Largest API request body, bytes. Default 8192. */
  check_maxPayloadSize?: number
  [option: string]: any
}

export class Grape extends EventEmitter {
  constructor(conf?: GrapeConf)
  conf: GrapeConf
  /** The bound ports, after start(). */
  dht_port?: number
  api_port?: number
  /** Binds the DHT and the API; keeps the process alive until stop(). */
  start(cb?: Callback<void>): void
  stop(cb?: Callback<void>): void
  /** Announces `val` at `port` from this Grape; cb gets how many nodes stored it. */
  announce(val: string, port: number, cb?: Callback<number>): void
  /** 'ip:port' of the peers announcing `val`. */
  lookup(val: string, cb: Callback<string[]>): void
  put(opts: { v: any; [field: string]: any }, cb?: Callback<string>): void
  get(opts: string | Buffer | { hash: string; salt?: string }, cb: Callback<any>): void

  on(event: 'ready' | 'listening' | 'node' | 'warning', listener: () => void): this
  /** A service was announced to this Grape. */
  on(event: 'announce', listener: (name: string) => void): this
  /** A lookup found a peer. */
  on(event: 'peer', listener: (peer: string) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
  once(event: 'ready' | 'listening' | 'node' | 'warning', listener: () => void): this
  once(event: 'announce', listener: (name: string) => void): this
  once(event: 'peer', listener: (peer: string) => void): this
  once(event: string | symbol, listener: (...args: any[]) => void): this
}
