//! Exports: the current heatmap as PNG and CSV, the output as JSON. All writes are atomic.

use std::path::Path;

use super::colors;

/// A heatmap as shown: row labels, column labels, values `[row][col]`, and its colour scale.
pub struct HeatmapData {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<f32>>,
    pub scale: f32,
    /// Signed values (diverging palette) or non-negative ones (sequential), as on screen.
    pub diverging: bool,
}

/// Encodes 8-bit pixels (`channels` 3 for RGB, 4 for RGBA) as PNG and writes it atomically: the
/// one PNG writer of the app (exports and screenshots).
pub fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    channels: usize,
    pixels: &[u8],
) -> Result<(), String> {
    let color = match channels {
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        n => return Err(format!("cannot write {n}-channel PNG")),
    };
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(pixels).map_err(|e| e.to_string())?;
    }
    crate::atomic_write(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A screenshot as PNG.
pub fn screenshot_png(path: &Path, image: &egui::ColorImage) -> Result<(), String> {
    let [w, h] = image.size;
    let raw: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    write_png(path, w, h, 4, &raw)
}

/// One cell is `CELL × CELL` pixels.
const CELL: usize = 12;

pub fn heatmap_png(path: &Path, h: &HeatmapData) -> Result<(), String> {
    let (w_cells, h_cells) = (h.cols.len().max(1), h.rows.len().max(1));
    let (width, height) = (w_cells * CELL, h_cells * CELL);
    let mut pixels = vec![0u8; width * height * 3];
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let rgb = colors::rgb(colors::scaled(v, h.scale, h.diverging));
            for y in r * CELL..(r + 1) * CELL {
                for x in c * CELL..(c + 1) * CELL {
                    let i = (y * width + x) * 3;
                    pixels[i..i + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    write_png(path, width, height, 3, &pixels)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn heatmap_csv(path: &Path, h: &HeatmapData) -> Result<(), String> {
    let mut out = String::from("feature");
    for c in &h.cols {
        out.push(',');
        out.push_str(&csv_field(c));
    }
    out.push('\n');
    for (label, row) in h.rows.iter().zip(&h.values) {
        out.push_str(&csv_field(label));
        for v in row {
            out.push_str(&format!(",{v}"));
        }
        out.push('\n');
    }
    crate::atomic_write(path, out.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_token_texts_and_png_is_a_png() {
        let dir = std::env::temp_dir().join(format!("hubel-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = HeatmapData {
            rows: vec!["L1N2".into()],
            cols: vec!["a,b".into(), " left".into()],
            values: vec![vec![1.0, -2.0]],
            scale: 2.0,
            diverging: true,
        };
        heatmap_csv(&dir.join("h.csv"), &h).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("h.csv")).unwrap(),
            "feature,\"a,b\",\" left\"\nL1N2,1,-2\n"
        );
        heatmap_png(&dir.join("h.png"), &h).unwrap();
        assert_eq!(
            &std::fs::read(dir.join("h.png")).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
