//! Error kinds that decide the exit code: bad input (exit 2) versus everything else (exit 1).

use std::fmt::Display;

/// A problem with something the user gave us (config, model file, image, argument, command).
/// The message names the thing at fault; the CLI exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub String);

/// Builds an [`InputError`] as an `anyhow::Error`.
pub fn bad_input(msg: impl Display) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.to_string()))
}

/// True when any error in the chain is an [`InputError`].
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<InputError>().is_some())
}

/// `bail!` for bad input.
#[macro_export]
macro_rules! bail_input {
    ($($arg:tt)*) => {
        return Err($crate::error::bad_input(format!($($arg)*)))
    };
}
