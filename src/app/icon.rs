//! The window icon: assets/icon/hubel-64.png (drawn by tools/icon/make_icon.py), compiled in.

/// The PNG the window icon is decoded from (8-bit RGBA).
pub const PNG: &[u8] = include_bytes!("../../assets/icon/hubel-64.png");

/// The icon as RGBA pixels for `ViewportBuilder::with_icon`.
pub fn window_icon() -> Result<egui::IconData, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(PNG));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut rgba = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut rgba).map_err(|e| e.to_string())?;
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "the icon is {:?} {:?}, not 8-bit RGBA",
            info.color_type, info.bit_depth
        ));
    }
    rgba.truncate(info.buffer_size());
    Ok(egui::IconData {
        rgba,
        width: info.width,
        height: info.height,
    })
}
