// Types of grenache-native/ws: `{ PeerRPCClient, PeerRPCServer, PeerPub, PeerSub,
// TransportRPCServer, TransportRPCClient }` of grenache-nodejs-ws 1.0.0 (lib/ws.js), written from
// the code (the DefinitelyTyped package declares a `listen(service, handler)` that does not exist).
import * as Base from './base'
import Link = require('./link')

export type Callback<T = any> = Base.Callback<T>

/** What verifyClient sees, as the `ws` package gives it. */
export interface VerifyClientInfo {
  origin: string | undefined
  secure: boolean
  req: {
    url: string
    headers: Record<string, string>
    socket: { getPeerCertificate(): { fingerprint?: string }; remoteAddress?: string }
  }
}

export interface WsSecureConf extends Base.SecureConf {
  /** Required over WSS: accept (true) or refuse (false) a client, asynchronously or by return. */
  verifyClient: ((info: VerifyClientInfo, cb: (ok: boolean, code?: number, message?: string) => void) => void) | ((info: VerifyClientInfo) => boolean)
}

export class TransportRPCServer extends Base.TransportRPCServer {
  /** `cert` is `{ fingerprint }` over WSS, else null. */
  on(event: 'request', listener: (rid: string, key: string, payload: any, handler: Base.ReplyHandler, cert: { fingerprint: string } | null) => void): this
  on(event: 'request-error', listener: () => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export class TransportRPCClient extends Base.TransportRPCClient {}

export class PeerRPCServer extends Base.Peer {
  constructor(link: Base.LinkLike | Link, conf?: { secure?: WsSecureConf; limits?: Base.PeerConf['limits']; [option: string]: any })
  transport(dest: string, opts?: object): TransportRPCServer
}

export class PeerRPCClient extends Base.PeerRPCClient {}

export class TransportPub extends Base.TransportSocket {
  port: number
  /** Binds all interfaces (the port must be an integer). */
  listen(port: number): this
  /** Sends `msg` to every connected subscriber (a Buffer as a binary frame). */
  pub(msg: string | Buffer): void
  unlisten(): void
}

export class PeerPub extends Base.Peer {
  transport(dest: string, opts?: object): TransportPub
}

export class TransportSub extends Base.TransportSocket {
  sub(key?: string, opts?: object): void
  unsub(): void
}

/** Subscribes to one random publisher of a key; events on the PeerSub. */
export class PeerSub extends Base.Peer {
  sub(key: string, opts?: object): void
  transport(dest: string, opts?: object): TransportSub
  on(event: 'connected' | 'disconnected', listener: () => void): this
  /** A text frame as a string, a binary frame as a Buffer. */
  on(event: 'message', listener: (msg: string | Buffer) => void): this
  /** The lookup failed (ERR_GRAPE_LOOKUP_EMPTY...). */
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}
