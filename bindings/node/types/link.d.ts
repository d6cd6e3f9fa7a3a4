// Types of grenache-native/link: the Link class of grenache-nodejs-link 1.0.2 (lib/link.js).

declare namespace Link {
  type Callback<T = any> = (err: Error | null | undefined, result?: T) => void

  interface LinkConf {
    /** The Grape's HTTP API, e.g. 'http://127.0.0.1:30001'. Default ''. */
    grape?: string
    /** Period of the timeout scan, ms. Default 2000. */
    monitorTimeout?: number
    /** Timeout of a Grape call, ms. Default 2500. */
    requestTimeout?: number
    /** Lookup cache size. Default 2500. */
    lruMaxSizeLookup?: number
    /** Lookup cache TTL, ms. Default 10000. */
    lruMaxAgeLookup?: number
    [option: string]: any
  }

  interface RequestOpts {
    /** Total attempts. lookup/announce: 3, else 1. */
    retry?: number
    /** ms; default conf.requestTimeout. */
    timeout?: number
  }

  interface LookupCache {
    get(key: string): any
    set(key: string, value: any): any
    remove(key: string): any
    clear(): void
    readonly length: number
  }

  /** What `get` returns for a stored item (an empty string when the hash is unknown). */
  interface Item {
    id: string
    token: string | null
    v: string
    k?: string
    sig?: string
    seq?: number
    salt?: string
    [field: string]: any
  }
}

/** A client of one Grape's HTTP API (not an EventEmitter). */
declare class Link {
  constructor(conf?: Link.LinkConf)
  conf: Required<Pick<Link.LinkConf, 'grape' | 'monitorTimeout' | 'requestTimeout' | 'lruMaxSizeLookup' | 'lruMaxAgeLookup'>> & Link.LinkConf
  /** After start(): `cache.lookup` holds lookups under `lookup:"<key>"`. */
  cache: { lookup?: Link.LookupCache; [type: string]: Link.LookupCache | undefined }
  init(): void
  /** Starts the monitor timer (it keeps the process alive until stop()) and the lookup cache. */
  start(): this
  stop(): this
  /** `['ip:port', ...]`; Error('ERR_GRAPE_LOOKUP_EMPTY') when none. */
  lookup(key: string, cb: Link.Callback<string[]>): void
  lookup(key: string, opts: Link.RequestOpts, cb: Link.Callback<string[]>): void
  announce(key: string, port: number, cb?: Link.Callback<number>): void
  announce(key: string, port: number, opts?: Link.RequestOpts, cb?: Link.Callback<number>): void
  /** Announces now and again every U[0.5,1.5]×`opts.interval` (default 120000) ms; `cb` after
   * the first announce. Returns false when already announcing. */
  startAnnouncing(key: string, port: number, opts?: (Link.RequestOpts & { interval?: number }) | null, cb?: Link.Callback): false | undefined
  stopAnnouncing(key: string, port: number): false | undefined
  /** `{ v }` (immutable) or `{ v, k, sig, seq, salt? }` (signed mutable); cb gets the hex hash.
   * Throws ERR_MISSING_ARGS without both arguments. */
  put(data: { v: any; [field: string]: any }, cb: Link.Callback<string>): void
  get(hash: string | { hash: string; salt?: string }, cb: Link.Callback<Link.Item | ''>): void
  /** One Grape API call (`POST <grape>/<type>`). */
  request(type: string, payload: any, opts: Link.RequestOpts, cb: Link.Callback): void
  monitor(): this
}

export = Link
