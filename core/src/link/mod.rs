//! Link: the client of a Grape's HTTP API (lookup cache and coalescing, announce,
//! keep-announcing, put/get, signed mutable put).
