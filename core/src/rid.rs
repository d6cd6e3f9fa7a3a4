//! Request ids: the `rid` of an RPC envelope and of a Grape API call.

/// A new request id: a uuid v4 string, from the thread-local RNG (no system call per id).
pub fn new_rid() -> String {
    let bytes: [u8; 16] = rand::random();
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}
