//! A report folder: `report.md` (what was run, the table, the caveats, the figures),
//! `report.json` (the report as `hubel experiment run --json` prints it), `protocol.json` (the
//! stimuli as run) and the figures as PNG and SVG. Every file is written atomically.

use std::path::{Path, PathBuf};

use super::{figure, Report};
use crate::corpus::protocol::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Figure(#[from] figure::FigureError),
    #[error("serialising the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// The figure of a report: its file stem and SVG.
pub fn figure_svg(report: &Report) -> (&'static str, String) {
    match report {
        Report::Selectivity(r) => ("selectivity", figure::selectivity(r)),
        Report::Induction(r) => ("induction", figure::induction(r)),
        Report::Lesion(r) => ("lesion", figure::lesion(r)),
        Report::Dose(r) => ("dose", figure::dose(r)),
    }
}

/// The Markdown of a report, with `figure` (a PNG beside it) shown under the heading.
pub fn markdown(
    report: &Report,
    protocol: &Protocol,
    model: &str,
    seconds: f64,
    figure: &str,
) -> String {
    let (kind, sets) = match report {
        Report::Dose(r) => (
            format!("dose–response on the {} protocol's sets", protocol.name),
            format!(
                "- A: {} · B: {} ({} text scored: {} + {} tokens)",
                protocol.sets.a.label, protocol.sets.b.label, r.sets_scored, r.tokens.a, r.tokens.b
            ),
        ),
        _ => (
            protocol.kind.name().to_string(),
            format!(
                "- A: {} ({} stimuli) · B: {} ({} stimuli)",
                protocol.sets.a.label,
                protocol.sets.a.stimuli.len(),
                protocol.sets.b.label,
                protocol.sets.b.stimuli.len()
            ),
        ),
    };
    let mut s = format!(
        "# {} ({kind})\n\n{}\n\n- model: {model}\n{sets}\n- run in {seconds:.1} s\n- position 0 (the attention sink) is left out of every mean and never ablated\n\n![{kind}]({figure})\n\n",
        protocol.name, protocol.description,
    );
    s.push_str("```\n");
    s.push_str(&report.render());
    s.push_str("```\n");
    s
}

fn write(dir: &Path, name: &str, bytes: &[u8], out: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    let path = dir.join(name);
    crate::atomic_write(&path, bytes).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    out.push(path);
    Ok(())
}

/// Writes the report folder `dir` (made if missing); the paths written.
pub fn write_folder(
    dir: &Path,
    report: &Report,
    protocol: &Protocol,
    model: &str,
    seconds: f64,
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    let (stem, svg) = figure_svg(report);
    let png = figure::to_png(&svg, 2.0)?;
    write(dir, &format!("{stem}.png"), &png, &mut out)?;
    write(dir, &format!("{stem}.svg"), svg.as_bytes(), &mut out)?;
    write(
        dir,
        "report.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
        &mut out,
    )?;
    write(
        dir,
        "protocol.json",
        serde_json::to_string_pretty(protocol)?.as_bytes(),
        &mut out,
    )?;
    let md = markdown(report, protocol, model, seconds, &format!("{stem}.png"));
    write(dir, "report.md", md.as_bytes(), &mut out)?;
    Ok(out)
}
