//! The Grape: a DHT node plus the HTTP API (`/announce`, `/lookup`, `/put`, `/get`).
