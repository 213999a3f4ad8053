//! Fonts: egui's defaults cover Latin and (monochrome) emoji; Chinese needs a system CJK font,
//! found through fontconfig's `fc-list` when it is installed.

use std::path::PathBuf;

/// What the font set-up found, shown in the UI when a CJK font is missing.
#[derive(Clone, Debug, PartialEq)]
pub enum CjkFont {
    Loaded(PathBuf),
    Missing(String),
}

fn find_cjk_font() -> Result<PathBuf, String> {
    // Fonts that declare Chinese coverage; `fc-match` would always answer with some font.
    let out = std::process::Command::new("fc-list")
        .args(["-f", "%{file}\n", ":lang=zh"])
        .output()
        .map_err(|e| {
            format!("fontconfig's fc-list is not available ({e}); Chinese shows as boxes")
        })?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let mut files: Vec<PathBuf> = listed
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| "no CJK font found (install fonts-noto-cjk or fonts-wqy-microhei); Chinese shows as boxes".into())
}

/// Adds a CJK fallback font to `ctx` if one is installed.
pub fn install(ctx: &egui::Context) -> CjkFont {
    let path = match find_cjk_font() {
        Ok(p) => p,
        Err(msg) => return CjkFont::Missing(msg),
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return CjkFont::Missing(format!("cannot read {}: {e}", path.display())),
    };
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "cjk".into(),
        std::sync::Arc::new(egui::FontData::from_owned(bytes)),
    );
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts.families.entry(family).or_default().push("cjk".into());
    }
    ctx.set_fonts(fonts);
    CjkFont::Loaded(path)
}
