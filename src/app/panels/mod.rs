//! The panels of the viewer, each an `impl HubelApp` block drawing from the app's plain data.

mod card;
mod chrome;
mod interventions;
mod maps;
mod output;
mod probe;

/// A token's text as shown in a chip: spaces, newlines and tabs made visible, and the
/// replacement character of a token that holds part of a multi-byte character shown as `?`.
pub fn visible(text: &str) -> String {
    text.replace(' ', "·")
        .replace('\n', "↵")
        .replace('\t', "→")
        .replace('\u{FFFD}', "?")
}
