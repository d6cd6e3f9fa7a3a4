//! The panic boundary: no panic crosses the C ABI.

use crate::result::grenache_result;

/// The value an exported function returns when its body panicked.
pub(crate) trait PanicOrDefault {
    fn panic_value() -> Self;
}

/// The value an exported function returns when a required pointer argument is NULL.
pub(crate) trait NullParameterOrDefault {
    fn null_value() -> Self;
}

impl PanicOrDefault for grenache_result {
    fn panic_value() -> Self {
        grenache_result::Panic
    }
}

impl NullParameterOrDefault for grenache_result {
    fn null_value() -> Self {
        grenache_result::NullParameter
    }
}

macro_rules! defaults {
    ($($t:ty => $v:expr),* $(,)?) => {$(
        impl PanicOrDefault for $t {
            fn panic_value() -> Self { $v }
        }
        impl NullParameterOrDefault for $t {
            fn null_value() -> Self { $v }
        }
    )*};
}

defaults! {
    () => (),
    bool => false,
    usize => 0,
    u32 => 0,
    u16 => 0,
}

impl<T> PanicOrDefault for *const T {
    fn panic_value() -> Self {
        std::ptr::null()
    }
}

impl<T> NullParameterOrDefault for *const T {
    fn null_value() -> Self {
        std::ptr::null()
    }
}

/// Runs the body of an exported function, turning a panic into the return type's
/// [`PanicOrDefault`] value (`GRENACHE_RESULT_PANIC`, NULL, 0, false).
macro_rules! ffi_panic_boundary {
    ( $($tt:tt)* ) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($tt)* })) {
            Ok(ret) => ret,
            Err(_) => return $crate::panic::PanicOrDefault::panic_value(),
        }
    };
}
pub(crate) use ffi_panic_boundary;

impl<T> PanicOrDefault for *mut T {
    fn panic_value() -> Self {
        std::ptr::null_mut()
    }
}

impl<T> NullParameterOrDefault for *mut T {
    fn null_value() -> Self {
        std::ptr::null_mut()
    }
}
