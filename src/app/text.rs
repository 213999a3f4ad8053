//! How token text is shown: whitespace made visible, and the stray bytes of a token that holds
//! part of a multi-byte character as `<E8>`-style labels. Every symbol used here is in the bundled
//! symbol font (`fonts.rs`), so none of it depends on a system font.

use crate::model::Token;

/// The symbols the viewer draws itself, in labels and in token chips. Each must be covered by
/// egui's default fonts or the bundled symbol font, checked by `fonts.rs`'s unit tests and by
/// `tests/fonts.rs` (which also scans `src/app` for any other non-ASCII symbol in a literal).
pub const UI_SYMBOLS: &str = "·↵→←↑↓‖✕×−±α…–—•≈≤≥∞⋅✓";

/// A token's text as shown in a chip: spaces, newlines and tabs made visible, and the
/// replacement character of a token that holds part of a multi-byte character shown as `?`
/// (use [`token_label`] where the token's bytes are known: it shows them).
pub fn visible(text: &str) -> String {
    text.replace(' ', "·")
        .replace('\n', "↵")
        .replace('\t', "→")
        .replace('\u{FFFD}', "?")
}

/// Bytes as text: whole UTF-8 characters as themselves (whitespace made visible as in
/// [`visible`]), each byte that is not part of one as `<E8>`. `苹` + the first byte of `果`
/// gives `苹<E6>`.
pub fn label_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&visible(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("<{b:02X}>"));
        }
    }
    out
}

/// A token as shown in a chip, a heatmap column or a list: [`label_bytes`] of its bytes, or
/// [`visible`] of its text when the bytes are unknown.
pub fn token_label(token: &Token) -> String {
    if token.bytes.is_empty() {
        visible(&token.text)
    } else {
        label_bytes(&token.bytes)
    }
}

/// Hex bytes, space-separated: `E8 8B B9`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Hover text naming the bytes a token stands for: `bytes E8 8B B9`.
pub fn bytes_hover(token: &Token) -> String {
    format!("bytes {}", hex(token.raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(bytes: &[u8]) -> Token {
        Token {
            id: 0,
            text: String::from_utf8_lossy(bytes).into_owned(),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn whitespace_is_visible() {
        assert_eq!(visible(" a\n\tb"), "·a↵→b");
        assert_eq!(visible("\u{FFFD}"), "?");
        assert_eq!(label_bytes(b" a\n\tb"), "·a↵→b");
    }

    #[test]
    fn stray_bytes_are_hex() {
        let apple = "苹".as_bytes(); // E8 8B B9
        let fruit = "果".as_bytes(); // E6 9E 9C
        assert_eq!(token_label(&token(&apple[..2])), "<E8><8B>");
        assert_eq!(token_label(&token(&apple[2..])), "<B9>");
        let mut mixed = apple.to_vec();
        mixed.push(fruit[0]);
        assert_eq!(token_label(&token(&mixed)), "苹<E6>");
        let mut tail = fruit[1..].to_vec();
        tail.extend_from_slice(" 🍎".as_bytes());
        assert_eq!(token_label(&token(&tail)), "<9E><9C>·🍎");
        assert_eq!(bytes_hover(&token(apple)), "bytes E8 8B B9");
        assert_eq!(bytes_hover(&token(&apple[..1])), "bytes E8");
    }

    #[test]
    fn without_bytes_the_text_is_shown() {
        let t = Token {
            id: 3,
            text: " x\u{FFFD}".into(),
            bytes: Vec::new(),
        };
        assert_eq!(token_label(&t), "·x?");
        assert_eq!(bytes_hover(&t), "bytes 20 78 EF BF BD");
        assert_eq!(token_label(&Token::from_text(1, "a b")), "a·b");
    }
}
