//! Fonts, in the order egui tries them for each character:
//!
//! 1. egui's defaults (Ubuntu-Light or Hack, then its icon and emoji fonts): Latin, Greek,
//!    Cyrillic, (monochrome) emoji;
//! 2. a bundled subset of DejaVu Sans (`assets/fonts/DejaVuSans-symbols.ttf`, 61 KiB): every symbol
//!    the viewer draws itself (↵ → ‖ ✕ ↓ × − α …, see [`crate::app::text::UI_SYMBOLS`]), so the
//!    interface never depends on which system fonts are installed;
//! 3. a CJK font for user text (Chinese probes and tokens), from `HUBEL_CJK_FONT` or else the
//!    fontconfig font that covers the most of a sample of Chinese, Japanese and Korean text, with
//!    Noto CJK / Source Han preferred over WenQuanYi over Droid Sans Fallback.
//!
//! A character no font has is drawn as a box (egui's [`egui::MissingGlyphPolicy::Tofu`]), never a
//! panic: [`install_with`] sets that policy, which `egui_kittest` otherwise sets to `Panic`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The bundled symbol font (a subset of DejaVu Sans 2.37; licence in `assets/fonts/`).
pub const SYMBOLS_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-symbols.ttf");
/// Its name in egui's [`egui::FontDefinitions`].
pub const SYMBOLS_FONT: &str = "DejaVuSans-symbols";
/// The CJK fallback's name in egui's [`egui::FontDefinitions`].
pub const CJK_FONT: &str = "cjk";
/// Names a CJK font file to use instead of the one fontconfig would give.
pub const CJK_FONT_ENV: &str = "HUBEL_CJK_FONT";

/// Where the CJK fallback font comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FontSource {
    /// `HUBEL_CJK_FONT` if it is set, else the best CJK font that fontconfig lists.
    Auto,
    /// This font file (the first face of a collection).
    File(PathBuf),
    /// The best CJK font fontconfig lists, whatever `HUBEL_CJK_FONT` says.
    Fontconfig,
    /// No CJK fallback: Chinese shows as boxes.
    None,
}

/// What the font set-up found, shown in the UI when a CJK font is missing.
#[derive(Clone, Debug, PartialEq)]
pub enum CjkFont {
    Loaded(PathBuf),
    Missing(String),
}

/// A face in a font file (`index` > 0 in a collection such as `.ttc`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Face {
    path: PathBuf,
    index: u32,
}

/// Text a CJK fallback should cover: common Chinese (simplified and traditional), kana, Hangul
/// and full-width punctuation. Fonts are ranked by how much of it they have.
const CJK_SAMPLE: &str = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过\
家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知\
苹果是一种水果語這個們來說時會為對開關東車門見長書電話馬魚鳥\
あいうえおかきくけこのはをにがでアイウエオカキクケコンー\
한국어의는이가을를에서하다\
，。、：；！？（）《》「」『』【】…";

/// Adds the bundled symbol font and a CJK fallback (found as [`FontSource::Auto`] says) to `ctx`.
pub fn install(ctx: &egui::Context) -> CjkFont {
    install_with(ctx, FontSource::Auto)
}

/// Adds the bundled symbol font and the CJK fallback `source` names to `ctx`, and makes a
/// character no font has draw as a box ([`egui::MissingGlyphPolicy::Tofu`]) rather than panic.
pub fn install_with(ctx: &egui::Context, source: FontSource) -> CjkFont {
    let (fonts, cjk) = definitions(source);
    ctx.set_fonts(fonts);
    ctx.set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
    cjk
}

/// egui's default fonts, then the bundled symbol font, then the CJK fallback `source` names, in
/// both the proportional and the monospace family.
pub fn definitions(source: FontSource) -> (egui::FontDefinitions, CjkFont) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        SYMBOLS_FONT.into(),
        Arc::new(egui::FontData::from_static(SYMBOLS_TTF)),
    );
    let cjk = match cjk_face(source) {
        Ok(face) => match std::fs::read(&face.path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| check_font(&bytes, face.index).map(|()| bytes))
        {
            Ok(bytes) => {
                let mut data = egui::FontData::from_owned(bytes);
                data.index = face.index;
                fonts.font_data.insert(CJK_FONT.into(), Arc::new(data));
                CjkFont::Loaded(face.path)
            }
            Err(e) => CjkFont::Missing(format!(
                "cannot read {}: {e}; Chinese shows as boxes",
                face.path.display()
            )),
        },
        Err(msg) => CjkFont::Missing(msg),
    };
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        let list = fonts.families.entry(family).or_default();
        list.push(SYMBOLS_FONT.into());
        if matches!(cjk, CjkFont::Loaded(_)) {
            list.push(CJK_FONT.into());
        }
    }
    (fonts, cjk)
}

/// What egui's font loader would reject with a panic: not a TrueType/OpenType font or
/// collection, no such face in a collection, or a table directory cut short.
fn check_font(bytes: &[u8], index: u32) -> Result<(), String> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let sfnt = |at: usize| -> Result<(), String> {
        let version = u32_at(at).ok_or("file too short")?;
        if ![
            0x0001_0000,
            u32::from_be_bytes(*b"OTTO"),
            u32::from_be_bytes(*b"true"),
        ]
        .contains(&version)
        {
            return Err("not a TrueType/OpenType font (.ttf, .otf or .ttc)".into());
        }
        let tables = bytes
            .get(at + 4..at + 6)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or("file too short")?;
        if at + 12 + 16 * tables > bytes.len() {
            return Err("font file cut short".into());
        }
        Ok(())
    };
    if bytes.starts_with(b"ttcf") {
        let faces = u32_at(8).ok_or("file too short")?;
        if index >= faces {
            return Err(format!(
                "the collection has {faces} faces, not face {index}"
            ));
        }
        let at = u32_at(12 + 4 * index as usize).ok_or("file too short")?;
        sfnt(at as usize)
    } else if index > 0 {
        Err(format!("not a font collection, so it has no face {index}"))
    } else {
        sfnt(0)
    }
}

impl FontSource {
    /// What [`FontSource::Auto`] means for a value of `HUBEL_CJK_FONT` (unset or empty:
    /// fontconfig's best). Tests pass the value here instead of setting the variable.
    pub fn auto_from(env: Option<std::ffi::OsString>) -> FontSource {
        match env.filter(|v| !v.is_empty()) {
            Some(path) => FontSource::File(path.into()),
            None => FontSource::Fontconfig,
        }
    }
}

fn cjk_face(source: FontSource) -> Result<Face, String> {
    match source {
        FontSource::None => Err("no CJK font was asked for; Chinese shows as boxes".into()),
        FontSource::File(path) => Ok(Face { path, index: 0 }),
        FontSource::Fontconfig => find_cjk_font(),
        FontSource::Auto => cjk_face(FontSource::auto_from(std::env::var_os(CJK_FONT_ENV))),
    }
}

/// The best CJK face fontconfig lists (see [`rank`]), or why there is none.
fn find_cjk_font() -> Result<Face, String> {
    // Fonts that declare Chinese coverage; `fc-match` would always answer with some font.
    let out = std::process::Command::new("fc-list")
        .args([
            "-f",
            "%{file}\t%{index}\t%{family}\t%{weight}\t%{charset}\n",
            ":lang=zh",
        ])
        .output()
        .map_err(|e| {
            format!("fontconfig's fc-list is not available ({e}); Chinese shows as boxes")
        })?;
    rank(&String::from_utf8_lossy(&out.stdout), |p| p.is_file())
        .into_iter()
        .next()
        .ok_or_else(|| {
            "no CJK font found (install fonts-noto-cjk or fonts-wqy-microhei, or set \
             HUBEL_CJK_FONT=/path/to/font); Chinese shows as boxes"
                .into()
        })
}

/// One line of `fc-list -f '%{file}\t%{index}\t%{family}\t%{weight}\t%{charset}\n'`.
struct Listed {
    face: Face,
    family: String,
    weight: f32,
    coverage: usize,
}

fn parse_line(line: &str) -> Option<Listed> {
    let mut parts = line.split('\t');
    let path = PathBuf::from(parts.next()?);
    let index = parts.next()?.trim().parse().unwrap_or(0);
    let family = parts.next()?.to_string();
    // A variable font lists a range (`[0 210]`); count it as regular.
    let weight = parts.next()?.trim().parse().unwrap_or(80.0);
    let charset = parse_charset(parts.next().unwrap_or(""));
    let coverage = CJK_SAMPLE
        .chars()
        .filter(|&c| {
            charset
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&(c as u32)))
        })
        .count();
    Some(Listed {
        face: Face { path, index },
        family,
        weight,
        coverage,
    })
}

/// fontconfig's charset text: hex code points and ranges, `20-7e a0-17f 192`.
fn parse_charset(text: &str) -> Vec<(u32, u32)> {
    text.split_whitespace()
        .filter_map(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            Some((
                u32::from_str_radix(lo, 16).ok()?,
                u32::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect()
}

/// How much a family is preferred when coverage ties (lower first): Noto CJK and Source Han
/// (Simplified Chinese first), then WenQuanYi, then anything else, then Droid Sans Fallback.
fn family_rank(family: &str) -> u32 {
    let f = family.to_lowercase();
    let sans = f.contains("sans cjk") || f.contains("han sans");
    let serif = f.contains("serif cjk") || f.contains("han serif");
    let sc = f.contains(" sc") || f.contains(" cn");
    let base = if sans && sc {
        0
    } else if sans {
        1
    } else if serif {
        2
    } else if f.contains("wenquanyi") || f.contains("wqy") {
        3
    } else if f.contains("droid") {
        5
    } else {
        4
    };
    // Monospace variants (WenQuanYi Micro Hei Mono) after proportional ones.
    base * 2 + u32::from(f.contains("mono"))
}

/// The faces in fontconfig's listing, best first: most of [`CJK_SAMPLE`] covered, then
/// [`family_rank`], then closest to a regular weight, then path (so the choice is stable).
/// `exists` filters out listed files that are gone.
fn rank(listing: &str, exists: impl Fn(&Path) -> bool) -> Vec<Face> {
    let mut listed: Vec<Listed> = listing
        .lines()
        .filter_map(parse_line)
        .filter(|l| exists(&l.face.path))
        .collect();
    listed.sort_by(|a, b| {
        b.coverage
            .cmp(&a.coverage)
            .then(family_rank(&a.family).cmp(&family_rank(&b.family)))
            .then((a.weight - 80.0).abs().total_cmp(&(b.weight - 80.0).abs()))
            .then(a.face.path.cmp(&b.face.path))
            .then(a.face.index.cmp(&b.face.index))
    });
    listed.into_iter().map(|l| l.face).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::text::UI_SYMBOLS;
    use egui::epaint::text::{Fonts, TextOptions};
    use egui::{FontFamily, FontId};

    const FULL: &str = "20-7e 3000-303f 3040-30ff 4e00-9fff ac00-d7a3 ff00-ffef";

    fn line(path: &str, index: u32, family: &str, weight: u32, charset: &str) -> String {
        format!("{path}\t{index}\t{family}\t{weight}\t{charset}\n")
    }

    #[test]
    fn font_files_are_checked() {
        assert_eq!(check_font(SYMBOLS_TTF, 0), Ok(()));
        assert!(check_font(SYMBOLS_TTF, 1).is_err());
        assert!(check_font(&SYMBOLS_TTF[..20], 0).is_err());
        assert!(check_font(b"wOF2 and more bytes", 0).is_err());
        let mut ttc = b"ttcf\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10".to_vec();
        ttc.extend_from_slice(SYMBOLS_TTF);
        assert_eq!(check_font(&ttc, 0), Ok(()));
        assert!(check_font(&ttc, 1).is_err());
    }

    #[test]
    fn charset_ranges() {
        assert_eq!(
            parse_charset("20-7e a0 4e00-9fff"),
            vec![(0x20, 0x7e), (0xa0, 0xa0), (0x4e00, 0x9fff)]
        );
    }

    #[test]
    fn droid_is_the_last_resort() {
        // Alphabetical order puts Droid first; coverage ties, so the family decides.
        let listing = [
            line(
                "/f/droid/DroidSansFallbackFull.ttf",
                0,
                "Droid Sans Fallback",
                80,
                FULL,
            ),
            line(
                "/f/wqy/wqy-microhei.ttc",
                1,
                "WenQuanYi Micro Hei Mono",
                80,
                FULL,
            ),
            line(
                "/f/wqy/wqy-microhei.ttc",
                0,
                "WenQuanYi Micro Hei,文泉驛微米黑",
                80,
                FULL,
            ),
        ]
        .concat();
        let ranked = rank(&listing, |_| true);
        assert_eq!(ranked[0].path, PathBuf::from("/f/wqy/wqy-microhei.ttc"));
        assert_eq!(ranked[0].index, 0);
        assert_eq!(
            ranked[2].path,
            PathBuf::from("/f/droid/DroidSansFallbackFull.ttf")
        );

        let with_noto = [
            listing.clone(),
            line(
                "/f/noto/NotoSansCJK-Bold.ttc",
                2,
                "Noto Sans CJK SC",
                200,
                FULL,
            ),
            line(
                "/f/noto/NotoSansCJK-Regular.ttc",
                0,
                "Noto Sans CJK JP",
                80,
                FULL,
            ),
            line(
                "/f/noto/NotoSansCJK-Regular.ttc",
                2,
                "Noto Sans CJK SC",
                80,
                FULL,
            ),
        ]
        .concat();
        let best = &rank(&with_noto, |_| true)[0];
        assert_eq!(
            (best.path.to_str().unwrap(), best.index),
            ("/f/noto/NotoSansCJK-Regular.ttc", 2)
        );
    }

    #[test]
    fn coverage_comes_first() {
        // A WenQuanYi without Hangul loses to a Droid that has it.
        let listing = [
            line("/f/droid.ttf", 0, "Droid Sans Fallback", 80, FULL),
            line(
                "/f/wqy.ttc",
                0,
                "WenQuanYi Micro Hei",
                80,
                "20-7e 3000-30ff 4e00-9fff ff00-ffef",
            ),
        ]
        .concat();
        assert_eq!(
            rank(&listing, |_| true)[0].path,
            PathBuf::from("/f/droid.ttf")
        );
        // Files that are gone are skipped; a malformed line is ignored.
        let listing = format!("garbage\n{listing}");
        let ranked = rank(&listing, |p| p != Path::new("/f/droid.ttf"));
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].path, PathBuf::from("/f/wqy.ttc"));
    }

    #[test]
    fn env_and_file_sources() {
        let (_, cjk) = definitions(FontSource::File("/nonexistent/font.ttf".into()));
        assert!(matches!(cjk, CjkFont::Missing(m) if m.contains("/nonexistent/font.ttf")));
        // A file that is not a font is refused here, not by a panic in egui's font loader.
        let not_a_font =
            std::env::temp_dir().join(format!("hubel-not-a-font-{}.ttf", std::process::id()));
        std::fs::write(&not_a_font, "hello").unwrap();
        let (fonts, cjk) = definitions(FontSource::File(not_a_font.clone()));
        std::fs::remove_file(&not_a_font).unwrap();
        assert!(
            matches!(&cjk, CjkFont::Missing(m) if m.contains("not a TrueType")),
            "{cjk:?}"
        );
        assert!(!fonts.font_data.contains_key(CJK_FONT));
        let (fonts, cjk) = definitions(FontSource::None);
        assert!(matches!(cjk, CjkFont::Missing(_)));
        assert!(!fonts.font_data.contains_key(CJK_FONT));
    }

    /// Every UI symbol is in egui's defaults or the bundled font, with no CJK font at all, and
    /// the bundled font comes after egui's and before the CJK fallback in both families.
    #[test]
    fn ui_symbols_need_no_system_font() {
        let (defs, _) = definitions(FontSource::None);
        for family in [FontFamily::Proportional, FontFamily::Monospace] {
            let list = &defs.families[&family];
            assert_eq!(list.last().map(String::as_str), Some(SYMBOLS_FONT));
        }
        let mut fonts = Fonts::new(TextOptions::default(), defs);
        for family in [FontFamily::Proportional, FontFamily::Monospace] {
            for c in UI_SYMBOLS.chars().chain(['?', '<', '>']) {
                assert!(
                    fonts.has_glyph(&FontId::new(14.0, family.clone()), c),
                    "{c:?} (U+{:04X}) is in no bundled font for {family:?}",
                    c as u32
                );
            }
        }
    }

    /// The bundled subset has what the symbol list needs on its own too (so a change of egui's
    /// defaults cannot take a symbol away), and the replacement character.
    #[test]
    fn bundled_font_covers_the_symbols() {
        let mut defs = egui::FontDefinitions::empty();
        defs.font_data.insert(
            SYMBOLS_FONT.into(),
            Arc::new(egui::FontData::from_static(SYMBOLS_TTF)),
        );
        defs.families
            .insert(FontFamily::Proportional, vec![SYMBOLS_FONT.into()]);
        let mut fonts = Fonts::new(TextOptions::default(), defs);
        let id = FontId::proportional(14.0);
        for c in UI_SYMBOLS.chars().chain(['\u{FFFD}', '⏎', '▲', '▼', '●']) {
            assert!(fonts.has_glyph(&id, c), "{c:?} (U+{:04X})", c as u32);
        }
        assert!(!fonts.has_glyph(&id, '苹'));
        assert!(SYMBOLS_TTF.len() < 100_000, "{} bytes", SYMBOLS_TTF.len());
    }
}
