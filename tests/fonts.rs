//! Fonts on a machine whose CJK font lacks the UI's symbols (Droid Sans Fallback, which sorts first
//! among fontconfig's Chinese fonts on Debian): every symbol the viewer draws must come from
//! egui's fonts or the bundled one, a character no font has must be a box and not a panic, and a
//! token holding part of a character must show its bytes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use egui::{Color32, FontFamily, FontId, MissingGlyphPolicy};
use hubel::app::fonts::{self, CjkFont, FontSource};
use hubel::app::text::{bytes_hover, token_label, UI_SYMBOLS};

const DROID: &str = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf";

/// Droid Sans Fallback, or `None` with a note where it is not installed; in CI (`CI=true`, where
/// `.ci/run` installs fonts-droid-fallback) its absence is a failure.
fn droid() -> Option<PathBuf> {
    let path = PathBuf::from(DROID);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{DROID} is missing; .ci/run installs fonts-droid-fallback");
    }
    eprintln!("note: {DROID} is not installed (apt-get install fonts-droid-fallback); skipped");
    None
}

fn families() -> [FontFamily; 2] {
    [FontFamily::Proportional, FontFamily::Monospace]
}

/// A context with `source` installed and fonts loaded (they load at the first pass).
fn context(source: FontSource) -> (egui::Context, CjkFont) {
    let ctx = egui::Context::default();
    let cjk = fonts::install_with(&ctx, source);
    pass(&ctx, |_| {});
    (ctx, cjk)
}

/// One pass of `ui` (there is no renderer to take the font atlas).
fn pass(ctx: &egui::Context, ui: impl FnMut(&mut egui::Ui)) {
    ctx.run_ui(egui::RawInput::default(), ui)
        .drop_without_applying_deltas();
}

/// Lays `text` out in one pass, as a label does, and returns the glyph count.
fn lay_out(ctx: &egui::Context, text: &str) -> usize {
    let mut glyphs = 0;
    pass(ctx, |ui| {
        ui.label(text);
        ui.monospace(text);
        for family in families() {
            let galley = ui.ctx().fonts_mut(|f| {
                f.layout_no_wrap(text.into(), FontId::new(14.0, family), Color32::WHITE)
            });
            glyphs += galley.rows.iter().map(|r| r.glyphs.len()).sum::<usize>();
        }
    });
    glyphs
}

/// Non-ASCII characters in the string and char literals of `src/app` (comments skipped), except
/// CJK text (Chinese, kana, Hangul, full-width punctuation): that is user text or sample data,
/// drawn by the CJK fallback.
fn symbols_in_source() -> BTreeSet<char> {
    fn scan(dir: &Path, out: &mut BTreeSet<char>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                literal_chars(&std::fs::read_to_string(&path).unwrap(), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    scan(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join("app"),
        &mut out,
    );
    out.retain(|&c| !c.is_ascii() && !is_cjk(c));
    out
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF | 0x2E80..=0x2FFF | 0x3000..=0x303F | 0x3040..=0x30FF | 0x3100..=0x31FF
        | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF
        | 0xFF00..=0xFFEF | 0x20000..=0x3FFFF)
}

/// The characters inside string and char literals of Rust source.
fn literal_chars(src: &str, out: &mut BTreeSet<char>) {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if matches!(chars.get(i + 1), Some('"') | Some('#'))
                && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) =>
            {
                // Raw string: r"…" or r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                j += 1;
                while j < chars.len() {
                    if chars[j] == '"' && (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) {
                        break;
                    }
                    out.insert(chars[j]);
                    j += 1;
                }
                i = j + 1 + hashes;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    } else {
                        out.insert(chars[i]);
                    }
                    i += 1;
                }
                i += 1;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{FFFD}') or a lifetime ('a).
                if chars.get(i + 1) == Some(&'\\') {
                    while i + 1 < chars.len() && chars[i + 1] != '\'' {
                        i += 1;
                    }
                    i += 2;
                } else if chars.get(i + 2) == Some(&'\'') {
                    out.insert(chars[i + 1]);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
}

#[test]
fn literal_scanner() {
    let mut out = BTreeSet::new();
    literal_chars(
        "// ↑ comment\nlet a = \"x → y\"; /* ✓ */ let b = '‖'; fn f<'a>() {} r#\"α\"#; '\\u{1}'; \"\\\"…\"",
        &mut out,
    );
    assert_eq!(
        out.into_iter()
            .filter(|c| !c.is_ascii())
            .collect::<String>(),
        "α‖…→"
    );
}

/// Every non-ASCII symbol in a literal of `src/app`, and every one of `UI_SYMBOLS`, is drawn by
/// egui's fonts or the bundled one: no CJK font is installed here at all.
#[test]
fn every_ui_symbol_is_in_a_bundled_font() {
    let found = symbols_in_source();
    eprintln!(
        "symbols in src/app literals: {}",
        found.iter().collect::<String>()
    );
    let (ctx, cjk) = context(FontSource::None);
    assert!(matches!(cjk, CjkFont::Missing(_)));
    ctx.set_missing_glyph_policy(MissingGlyphPolicy::Panic);
    let mut missing = Vec::new();
    for c in found.iter().copied().chain(UI_SYMBOLS.chars()) {
        for family in families() {
            if !ctx.fonts_mut(|f| f.has_glyph(&FontId::new(14.0, family.clone()), c)) {
                missing.push(format!("{c:?} (U+{:04X}) in {family:?}", c as u32));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no bundled font has: {missing:?} (add them to tools/fonts/make_symbols.sh)"
    );
    // Laid out under egui_kittest's policy: a missing glyph would panic.
    let all: String = found.iter().collect();
    assert!(lay_out(&ctx, &all) > 0);
}

/// The failing case of issue 6: Droid Sans Fallback as the CJK font. Every UI symbol resolves to
/// a real glyph from egui's fonts or the bundled one (not Droid, not the box), in both families,
/// and laying them out under `MissingGlyphPolicy::Panic` (egui_kittest's) does not panic.
#[test]
fn ui_symbols_with_droid_as_the_cjk_font() {
    let Some(droid) = droid() else { return };
    let (ctx, cjk) = context(FontSource::File(droid.clone()));
    assert_eq!(cjk, CjkFont::Loaded(droid));
    ctx.set_missing_glyph_policy(MissingGlyphPolicy::Panic);
    let strings = [
        UI_SYMBOLS.to_string(),
        hubel::app::text::visible(" a\n\tb"),
        "KL(baseline ‖ intervened) = 0.1 nats".into(),
        "mean NLL 1.2 → 3.4".into(),
        "Attention pattern (query ↓ × key →)".into(),
        "intervened − baseline · Steer α · Open…".into(),
        "苹果是一种水果 🍎".into(),
    ];
    for s in &strings {
        assert!(lay_out(&ctx, s) > 0, "{s}");
    }
    for c in UI_SYMBOLS.chars() {
        for family in families() {
            let owners = ctx.fonts_mut(|f| f.characters(&family).get(&c).cloned());
            let first = owners.as_ref().and_then(|o| o.first()).map(String::as_str);
            assert!(
                first.is_some_and(|f| f != fonts::CJK_FONT),
                "{c:?} (U+{:04X}) in {family:?} comes from {owners:?}",
                c as u32
            );
        }
    }
    // Chinese comes from Droid.
    let owners = ctx.fonts_mut(|f| f.characters(&FontFamily::Proportional).get(&'苹').cloned());
    assert_eq!(owners, Some(vec![fonts::CJK_FONT.to_string()]));
}

/// What the test above guards against: egui's default fonts plus Droid, as the font set-up
/// was before the bundled font, lack the newline symbol.
#[test]
fn droid_alone_lacks_ui_symbols() {
    let Some(droid) = droid() else { return };
    let mut defs = egui::FontDefinitions::default();
    defs.font_data.insert(
        "droid".into(),
        std::sync::Arc::new(egui::FontData::from_owned(std::fs::read(droid).unwrap())),
    );
    defs.families
        .get_mut(&FontFamily::Proportional)
        .unwrap()
        .push("droid".into());
    let mut f = egui::epaint::text::Fonts::new(Default::default(), defs);
    let id = FontId::proportional(14.0);
    let lacking: String = UI_SYMBOLS
        .chars()
        .filter(|&c| !f.has_glyph(&id, c))
        .collect();
    assert!(lacking.contains('↵'), "lacking: {lacking}");
}

/// A character no font has (private use, a rare CJK Extension B ideograph, an unassigned plane)
/// draws as a box, even after egui_kittest's `Panic` policy was set on the context.
#[test]
fn missing_glyphs_draw_as_boxes() {
    let source = match droid() {
        Some(p) => FontSource::File(p),
        None => FontSource::None,
    };
    let ctx = egui::Context::default();
    ctx.set_missing_glyph_policy(MissingGlyphPolicy::Panic);
    fonts::install_with(&ctx, source);
    assert_eq!(ctx.missing_glyph_policy(), MissingGlyphPolicy::Tofu);
    pass(&ctx, |_| {});
    let text = "a\u{E000}b\u{2A6D6}c\u{10FFFD}";
    for c in ['\u{E000}', '\u{10FFFD}'] {
        assert!(!ctx.fonts_mut(|f| f.has_glyph(&FontId::proportional(14.0), c)));
    }
    assert!(lay_out(&ctx, text) >= 6);
}

/// `HUBEL_CJK_FONT` forces a file: its value is resolved by `FontSource::auto_from`, tested
/// here without setting the variable (other tests run in the same process).
#[test]
fn env_forces_the_cjk_font() {
    assert_eq!(FontSource::auto_from(None), FontSource::Fontconfig);
    assert_eq!(
        FontSource::auto_from(Some("".into())),
        FontSource::Fontconfig
    );
    let Some(droid) = droid() else { return };
    let (_, cjk) = fonts::definitions(FontSource::auto_from(Some(droid.clone().into())));
    assert_eq!(cjk, CjkFont::Loaded(droid));
    let (defs, missing) =
        fonts::definitions(FontSource::auto_from(Some("/nonexistent/cjk.ttf".into())));
    assert!(matches!(missing, CjkFont::Missing(m) if m.contains("/nonexistent/cjk.ttf")));
    assert!(!defs.font_data.contains_key(fonts::CJK_FONT));
}

/// fontconfig's choice is not Droid when a better CJK font is installed (WenQuanYi beside it on
/// the CI machine).
#[test]
fn fontconfig_choice_prefers_coverage_and_family() {
    let (_, cjk) = fonts::definitions(FontSource::Fontconfig);
    eprintln!("CJK font: {cjk:?}");
    assert!(
        !matches!(cjk, CjkFont::Missing(_)) || droid().is_none(),
        "{cjk:?}"
    );
    if Path::new("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc").is_file() {
        assert_ne!(cjk, CjkFont::Loaded(DROID.into()));
    }
}

/// Labels of byte-level tokens: SmolLM2 splits 苹 (E8 8B B9) over tokens; each shows its
/// characters, and its stray bytes as `<E8>`, never `?`.
#[test]
fn smollm2_token_labels_show_bytes() {
    let model = common::smollm2();
    let text = "苹果是一种水果 🍎";
    let tokens = model.tokenize(text).unwrap();
    let labels: Vec<String> = tokens.iter().map(token_label).collect();
    eprintln!("{labels:?}");
    let all: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.clone()).collect();
    assert_eq!(all, text.as_bytes(), "the tokens' bytes are the text");
    for (t, label) in tokens.iter().zip(&labels) {
        assert!(
            !label.contains('?') && !label.contains('\u{FFFD}'),
            "{label}"
        );
        assert_eq!(unlabel(label), t.bytes, "{label} is {:?}", t.bytes);
        let hover = bytes_hover(t);
        assert!(hover.starts_with("bytes "), "{hover}");
        assert_eq!(hover.split(' ').count(), t.bytes.len() + 1, "{hover}");
    }
    assert!(
        labels.iter().any(|l| l.contains("<E8>")),
        "苹 (E8 8B B9) is split, so a label has <E8>: {labels:?}"
    );
    // The JSON shape of a token is unchanged.
    let json = serde_json::to_value(&tokens[0]).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "text"]);
}

/// The bytes a label stands for: `<XX>` is one byte, `·` `↵` `→` are space, newline and tab.
fn unlabel(label: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = label;
    while let Some(c) = rest.chars().next() {
        if c == '<' && rest.len() >= 4 && rest.as_bytes()[3] == b'>' {
            if let Ok(b) = u8::from_str_radix(&rest[1..3], 16) {
                out.push(b);
                rest = &rest[4..];
                continue;
            }
        }
        let plain = match c {
            '·' => ' ',
            '↵' => '\n',
            '→' => '\t',
            c => c,
        };
        out.extend_from_slice(plain.to_string().as_bytes());
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Constructed byte sequences, through the same label function the UI uses.
#[test]
fn constructed_byte_labels() {
    let t = |bytes: &[u8]| hubel::model::Token {
        id: 0,
        text: String::from_utf8_lossy(bytes).into_owned(),
        bytes: bytes.to_vec(),
    };
    assert_eq!(token_label(&t(&[0xE8, 0x8B, 0xB9, 0xE6])), "苹<E6>");
    assert_eq!(token_label(&t(&[0x9E, 0x9C])), "<9E><9C>");
    assert_eq!(token_label(&t(b" \n\t")), "·↵→");
    assert_eq!(token_label(&t(&[0xF0, 0x9F])), "<F0><9F>");
    assert_eq!(bytes_hover(&t(&[0xE8, 0x8B, 0xB9])), "bytes E8 8B B9");
    assert_eq!(token_label(&t(b"a<b")), "a<b");
    for bytes in [&[0xE8u8, 0x8B, 0xB9, 0xE6][..], &[0x20, 0xFF, 0x0A]] {
        assert_eq!(unlabel(&token_label(&t(bytes))), bytes);
    }
}
