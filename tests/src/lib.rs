//! Support for the end-to-end tests: locating and starting the Node.js reference peers.
