//! The broker (to come).
