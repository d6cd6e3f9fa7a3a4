//! PUB/SUB over WebSocket.
