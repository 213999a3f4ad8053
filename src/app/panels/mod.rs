//! The panels of the viewer, each an `impl HubelApp` block drawing from the app's plain data.

mod card;
mod chrome;
mod interventions;
mod maps;
mod output;
mod probe;

/// How token text is shown (whitespace made visible, stray bytes as `<E8>`): see `app/text.rs`.
pub use super::text::visible;
